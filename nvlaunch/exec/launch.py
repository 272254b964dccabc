"""`nvlaunch run`: a rootless container on a rootfs directory, GPUs included.

Processes:  nvlaunch (P, the caller) --clone--> init (I, PID 1 of the new pid namespace)
--fork--> the command (W).

P   clones I with new user (when not root), mount, pid, ipc, uts (and net) namespaces,
    writes I's id maps, then waits, forwarding signals to I.  It exits with I's status.
I   builds the container's mount tree and pivots into it; then it forks W and stays as
    PID 1: it forwards signals to W, reaps orphans, and exits with W's status.
W   drops what the container must not have (bounding set, no_new_privs) and execs.

The mount tree is exec.runroot's: an overlay on the rootfs, which is never written.

Errors in I or W travel to P as one error record on a pipe (core.errors.pack_error:
exit code, errno, message); P raises it, and the CLI prints it as one line.

Modules: this one is P; exec.pid1 is I and W; exec.runroot the mount tree.
"""
from __future__ import annotations

import _signal as signal   # the C module: `signal` would import enum (2 ms a launch)
import errno
import os
import sys

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.core.log import checkpoint
from nvlaunch.exec.pid1 import (FORWARDED_SIGNALS, TTY_FORWARDED, TTY_IGNORED_P, Forwarder,
                                container_init, exit_code, preload)
from nvlaunch.exec.runroot import RunConfig
from nvlaunch.kernel.real import REAL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from nvlaunch.core.timings import Timings
    from nvlaunch.kernel.protocol import Kernel

__all__ = ["run"]


def run(cfg: RunConfig, kernel: Kernel | None = None, timings: Timings | None = None) -> int:
    """Start the container and return its exit status (128+N for a signal)."""
    kernel = kernel or REAL
    rootless = os.geteuid() != 0
    tty = os.isatty(0)
    # the terminal's foreground job at the start, if it is ours: given back at the end
    foreground = _foreground_pgrp() if tty else None
    flags = C.CLONE_NEWNS | C.CLONE_NEWPID | C.CLONE_NEWIPC | C.CLONE_NEWUTS
    if rootless:
        flags |= C.CLONE_NEWUSER
    if cfg.net == "none":
        flags |= C.CLONE_NEWNET
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    if timings:
        timings.mark("prepare")
    checkpoint("run-clone")
    # Blocked across clone (and inherited by I) so that a signal P forwards before I has
    # its handlers stays pending in I rather than being dropped; each side unblocks once
    # its handlers are in place.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        pid = kernel.clone(flags)
    except OSError as err:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        from nvlaunch.host.features import userns_restriction   # the error path only
        hint = (userns_restriction() if rootless else None) or E.hint_for(err.errno, "unshare")
        raise E.NamespaceError(f"cannot create namespaces: {err.strerror}", hint, errno=err.errno) from err
    if pid == 0:  # I, PID 1 of the new pid namespace
        forwarder = Forwarder()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(go_w)
        os.close(err_r)
        code = E.EXIT_SETUP
        try:
            try:
                preload(cfg)               # while P maps our ids; a failure here comes
            except Exception:  # noqa: BLE001 - again, reported, from container_init's call
                pass
            if os.read(go_r, 1) != b"g":   # P died or gave up before mapping us
                os._exit(E.EXIT_SETUP)
            os.close(go_r)
            if timings:
                timings.mark("namespaces")
            code = container_init(cfg, kernel, forwarder, timings)
        except BaseException as exc:  # noqa: BLE001 - everything goes to P as one record
            code = _report(err_w, exc, cfg.debug)
        os._exit(code)
    os.close(go_r)
    os.close(err_w)
    try:
        if rootless:
            from nvlaunch.kernel.idmap import write_maps   # rootless only
            write_maps(kernel, pid, cfg.uid, cfg.gid)
        checkpoint("run-mapped")
        os.write(go_w, b"g")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(err_r)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    os.close(go_w)
    status = _wait_forwarding(pid, mask, tty)
    if timings:   # P's own clock: clone to PID 1 gone, its mount namespace torn down
        timings.report_end("container")
    with os.fdopen(err_r, "rb") as f:
        record = f.read()
    if foreground is not None:
        _restore_foreground(foreground)
    if record:
        from nvlaunch.host.features import userns_restriction
        _raise_record(record, userns_restriction() if rootless else None)
    return exit_code(status)


# ---- P side -----------------------------------------------------------------------------

def _wait_forwarding(pid: int, mask: set[int], tty: bool) -> int:
    """Wait for PID 1, forwarding signals to it.  At a terminal nvlaunch is one process of
    the shell's job, with the container's command (exec.pid1): ^Z stops P with it, so
    the shell gets its prompt back and `fg`/`bg` resume both; ^C and ^\\ reach the command
    from the terminal itself, and P ignores them while it waits."""
    forwarder = Forwarder(pid)
    if tty:
        forwarder.narrow(TTY_FORWARDED, TTY_IGNORED_P)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except ChildProcessError:
                return 0
    finally:
        forwarder.restore()


def _foreground_pgrp() -> int | None:
    try:
        pgrp = os.tcgetpgrp(0)
    except OSError:
        return None
    return pgrp if pgrp == os.getpgrp() else None     # started in the background: not ours


def _restore_foreground(pgrp: int) -> None:
    """Give the terminal back to our process group if the container's command (an
    interactive shell inside, with job control of its own) took it."""
    try:
        if os.tcgetpgrp(0) != pgrp:
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, pgrp)
            signal.signal(signal.SIGTTOU, old)
    except OSError:
        pass


def _report(fd: int, exc: BaseException, debug: bool) -> int:
    """Write one error record for P; returns the exit code I should use."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else E.EXIT_SETUP
    try:
        os.write(fd, E.pack_error(exc, trace=debug))
    except OSError:
        pass
    return E.describe(exc)[0]


def _raise_record(record: bytes, restriction: str | None = None) -> NoReturn:
    err, trace = E.unpack_error(record)
    if trace:
        sys.stderr.write(trace)
    if restriction and err.errno == errno.EPERM:     # chosen by errno, never by message text
        err.hint = restriction
    raise err


