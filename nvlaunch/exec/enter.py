"""Injection from a prestart / createRuntime hook, which runs in the runtime's namespaces.

Where the container has a user namespace of its own (a rootless runtime), a forked child
joins it and the mount namespace, applies the plan in place (exec.inject) and reports one
record back: a process that joined a user namespace cannot come back.  Where it has none
(a root runtime), the hook visits the mount namespace itself and comes back (setns(2)
both ways), which saves the fork of an interpreter and its copied pages (~4-5 ms of a
hook).  Either way the cgroup undo and the error line happen in the host's namespaces."""
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
    """Apply `plan` under `rootfs` in the namespaces `ns`; returns the number of paths
    created in the rootfs.  Without a user namespace to join: visit_and_inject; else a
    child process, as below.

    fork; the child joins `ns`, injects, and reports over a pipe "OK <n>" (n paths
    created) or an error record (errors.pack_error).  Returns n; raises the child's
    error with its exit code and errno.

    The child dies with this process (a parent-death SIGKILL, set again once it has
    joined the namespaces, since a change of credentials clears it) and holds none of
    the runtime's pipes (stdin and stdout are /dev/null; stderr only with --debug): a
    hook the runtime kills or times out leaves nothing running that keeps the runtime
    waiting.  If this process is interrupted (core.interrupt), the child is asked to
    stop (SIGTERM: it undoes what it made and reports) and killed after GRACE_S."""
    if ns.user_fd is None:
        return visit_and_inject(plan, rootfs, ns)
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


def visit_and_inject(plan: Plan, rootfs: str, ns: Namespaces) -> int:
    """Enter the container's mount namespace (no user namespace to join), inject, and
    return to ours, whatever happened inside: an error, or a signal that
    core.interrupt turns into one (exec.inject undoes its mounts and files first).
    setns(2) of a mount namespace also moves the root and the working directory to that
    namespace's root, so both are put back from fds opened before.  Nothing is imported
    while inside (the import system would look at the container's view of the tree);
    exec.inject's error paths import nothing."""
    own = REAL.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = REAL.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        cwd: int | None = REAL.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        cwd = None                  # a removed working directory: "/" afterwards
    try:
        ns.enter(REAL)
        try:
            checkpoint("hook-inject")
            created = len(inject(plan, rootfs, REAL).created)
        finally:
            _come_back(own, root, cwd)
        log(f"injected from this process (mnt namespace of pid {ns.pid})")
        return created
    finally:
        for fd in (own, root, cwd):
            if fd is not None:
                REAL.close(fd)


def _come_back(own: int, root: int, cwd: int | None) -> None:
    try:
        REAL.setns(own, C.CLONE_NEWNS, "/proc/self/ns/mnt (the runtime's)")
        REAL.chdir(root)
        REAL.chroot(".")
        REAL.chdir(root if cwd is None else cwd)
    except OSError as err:
        # Never go on (the cgroup undo, the error line) from the container's view.
        os.write(2, b"nvlaunch: error: hook: cannot return to the runtime's mount namespace: "
                 + (err.strerror or str(err)).encode() + b"\n")
        os._exit(E.EXIT_SETUP)


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
