"""The injector process of a prestart / createRuntime hook: a forked child joins the
container's user (when it differs) and mount namespaces, applies the plan in place
(exec.inject) and reports one record back.  The hook itself never leaves the host's
namespaces, so its cgroup undo and its error line happen there."""
from __future__ import annotations

import _signal as signal
import os
import sys

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.core.log import STOP_AT, checkpoint, log
from nvlaunch.exec.inject import inject
from nvlaunch.kernel.namespaces import Namespaces
from nvlaunch.kernel.real import REAL
from nvlaunch.plan.records import Plan


def inject_in_namespaces(plan: Plan, rootfs: str, ns: Namespaces) -> int:
    """fork; the child joins `ns`, injects, and reports over a pipe "OK <n>" (n paths
    created) or an error record (errors.pack_error).  Returns n; raises the child's
    error with its exit code and errno.

    The child dies with this process (a parent-death SIGKILL, set again once it has
    joined the namespaces, since a change of credentials clears it) and holds none of
    the runtime's pipes (stdin and stdout are /dev/null; stderr only with --debug): a
    hook the runtime kills or times out leaves nothing running that keeps the runtime
    waiting.  If this process is interrupted (core.interrupt), the child is asked to
    stop (SIGTERM: it undoes what it made and reports) and killed after GRACE_S."""
    with_trace = log.on   # a traceback in the record only for --debug / NVLAUNCH_DEBUG*:
    if with_trace:        # importing traceback costs the hook ~10 ms, and the child must
        import traceback  # noqa: F401 - have it before setns (it cannot import after)
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:            # child: never returns
        os.close(r)
        try:
            _detach(parent, with_trace or STOP_AT is not None)
            ns.enter(REAL)
            _die_with(parent)
            checkpoint("hook-inject")
            data = b"OK %d" % len(inject(plan, rootfs, REAL).created)
        except BaseException as exc:    # noqa: BLE001 - everything goes to the parent
            data = E.pack_error(exc, trace=with_trace)
        try:
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _stop(pid)
        raise
    finally:
        os.close(r)
    log(f"injector child {pid} done ({'user+mnt' if ns.user_fd is not None else 'mnt'} namespace)")
    report = b"".join(chunks)
    if report.startswith(b"OK "):
        return int(report[3:])
    if not report:
        if os.WIFSIGNALED(status):
            raise E.NamespaceError(f"injector process killed by signal {os.WTERMSIG(status)}")
        raise E.NamespaceError(f"injector process exited with status "
                               f"{os.waitstatus_to_exitcode(status)} and no report")
    err, trace = E.unpack_error(report)
    if trace:
        log("injector traceback:\n" + trace.rstrip())
    raise err


GRACE_S = 2.0      # how long an interrupted hook waits for its child's undo


def _die_with(parent: int) -> None:
    REAL.prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:      # it died before the signal was armed
        os._exit(1)


def _detach(parent: int, keep_stderr: bool) -> None:
    """The child's side of the docstring: die with the hook, hold no runtime pipe."""
    _die_with(parent)
    null = REAL.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(null, fd)
    REAL.close(null)


def _stop(pid: int) -> None:
    """SIGTERM, GRACE_S for the child to undo and exit, then SIGKILL; reaped."""
    import time
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.monotonic() + GRACE_S
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        except BaseException:     # a second signal: no more waiting
            done = 0
            end = 0
        if done:
            return
        if time.monotonic() >= end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.01)
