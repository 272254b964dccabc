"""The injector process of a prestart / createRuntime hook: a forked child joins the
container's user (when it differs) and mount namespaces, applies the plan in place
(exec.inject) and reports one record back.  The hook itself never leaves the host's
namespaces, so its cgroup undo and its error line happen there."""
from __future__ import annotations

import os
import sys

from nvlaunch.core import errors as E
from nvlaunch.core.log import log
from nvlaunch.exec.inject import inject
from nvlaunch.kernel.namespaces import Namespaces
from nvlaunch.kernel.real import REAL
from nvlaunch.plan.records import Plan


def inject_in_namespaces(plan: Plan, rootfs: str, ns: Namespaces) -> int:
    """fork; the child joins `ns`, injects, and reports over a pipe "OK <n>" (n paths
    created) or an error record (errors.pack_error).  Returns n; raises the child's
    error with its exit code and errno."""
    with_trace = log.on   # a traceback in the record only for --debug / NVLAUNCH_DEBUG*:
    if with_trace:        # importing traceback costs the hook ~10 ms, and the child must
        import traceback  # noqa: F401 - have it before setns (it cannot import after)
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:            # child: never returns
        os.close(r)
        try:
            ns.enter(REAL)
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
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
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
