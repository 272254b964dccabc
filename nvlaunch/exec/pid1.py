"""PID 1 of `run`'s container (I): it builds the mount tree (exec.runroot), starts the
command (W) and stays as init: forwards signals to it, reaps orphans, exits with its
status.  W drops what the container must not have (the capability bounding set as real
root, --uid/--gid, no_new_privs) and execs.

After pivot_root no module can be imported any more (the host's files are gone): what
I and W need is imported before.
"""
from __future__ import annotations

import _signal as signal
import errno
import os
import stat

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.exec.runroot import RunConfig, build_root, enter_staging
from nvlaunch.host.view import is_initial_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

    from nvlaunch.core.timings import Timings
    from nvlaunch.kernel.protocol import Kernel

# The signals P forwards to PID 1 and PID 1 to the command.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


class Forwarder:
    """Handlers that forward FORWARDED_SIGNALS to `pid`: P's to PID 1, and PID 1's to the
    command, installed in PID 1 first thing after clone.

    The kernel drops a signal sent to a pid namespace's init unless init has a handler
    for it, so a handler that only came after the command started would lose the signals
    sent in between (the command may already be running and visible).  Until the target
    is known (start()) they are held, then forwarded in order."""

    def __init__(self, pid: int | None = None):
        self.pid = pid
        self.held: list[int] = []
        self.old = {s: signal.signal(s, self.handle) for s in FORWARDED_SIGNALS}

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pid is None:
            self.held.append(signum)
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def start(self, pid: int) -> None:
        self.pid = pid
        held, self.held = self.held, []
        for signum in held:
            self.handle(signum, None)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def container_init(cfg: RunConfig, kernel: Kernel, forwarder: Forwarder,
                   timings: Timings | None) -> int:
    kernel.prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
    real_root = is_initial_root()
    # Everything I and W import must be imported before pivot_root hides the host.
    if cfg.plan.ldcache:
        import nvlaunch.host.ldcache  # noqa: F401  (runroot builds the merged cache with it)
    if cfg.net == "none":
        from pyroute2 import IPRoute  # noqa: F401
    if cfg.debug:
        import traceback  # noqa: F401
    build_root(cfg, kernel, enter_staging(kernel), not real_root, timings)
    if cfg.hostname:
        kernel.sethostname(cfg.hostname)
    if cfg.net == "none":
        _loopback_up()
    return _init_loop(cfg, kernel, real_root, forwarder, timings)


def _loopback_up() -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


def _init_loop(cfg: RunConfig, kernel: Kernel, real_root: bool, forwarder: Forwarder,
               timings: Timings | None) -> int:
    """Start the command and stay as PID 1: forward signals, reap orphans.

    Without a terminal the command is started with posix_spawn (a vfork: no copy of this
    Python process), after PID 1 has dropped what the container must not have, which the
    command inherits.  With a terminal it is forked, so that it can make itself the
    terminal's foreground process group before it execs."""
    env = _container_env(cfg)
    if timings:
        timings.mark("init")
        timings.report()
    failure = b""
    if not os.isatty(0):
        _drop_privileges(cfg, kernel, real_root)
        try:
            pid = os.posix_spawn(_find_command(cfg.argv[0], env), list(cfg.argv), env,
                                 setpgroup=0)
        except OSError as err:
            raise E.ExecError(cfg.argv[0], err) from None
    else:
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(exec_r)
            try:
                _become_command(cfg, kernel, real_root)
                _execvpe(cfg.argv[0], list(cfg.argv), env)
            except OSError as err:
                os.write(exec_w, E.pack_error(E.ExecError(cfg.argv[0], err)))
            except BaseException as exc:  # noqa: BLE001
                os.write(exec_w, E.pack_error(exc))
            os._exit(E.EXIT_NOTFOUND)
        os.close(exec_w)
        with os.fdopen(exec_r, "rb") as f:
            failure = f.read()
    forwarder.start(pid)
    status = 0
    while True:   # reap everything; leave when the command itself is gone
        try:
            done, st = os.wait()
        except ChildProcessError:
            break
        if done == pid:
            status = st
            break
    if timings:
        timings.report_end("command")
    if failure:
        raise E.unpack_error(failure)[0]
    return exit_code(status)


def _find_command(name: str, env: dict[str, str]) -> str:
    """`name` looked up in the container's PATH as execvp(3) would: the first executable
    regular file; EACCES if only non-executable ones exist; ENOENT if none."""
    if "/" in name:
        return name
    denied = None
    for directory in env.get("PATH", C.DEFAULT_PATH).split(":"):
        path = os.path.join(directory or ".", name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
        denied = path
    if denied:
        raise E.ExecError(name, OSError(errno.EACCES, os.strerror(errno.EACCES)))
    raise E.ExecError(name, OSError(errno.ENOENT, os.strerror(errno.ENOENT)))


def _execvpe(name: str, argv: list[str], env: dict[str, str]) -> None:
    """execvpe(3) over the container's PATH.  Written out because os.execvpe imports the
    `warnings` module on its way, and after pivot_root no module can be imported.  Like
    execvp: a missing file moves on, EACCES is remembered, ENOENT if nothing was found."""
    if "/" in name:
        os.execve(name, argv, env)
    denied = None
    for directory in env.get("PATH", C.DEFAULT_PATH).split(":"):
        try:
            os.execve(os.path.join(directory or ".", name), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as err:
            denied = err
    raise denied or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _container_env(cfg: RunConfig) -> dict[str, str]:
    env = {"PATH": C.DEFAULT_PATH, "HOME": "/root" if cfg.uid == 0 else "/",
           "HOSTNAME": cfg.hostname or os.uname().nodename}
    term = os.environ.get("TERM")
    if term:
        env["TERM"] = term
    env.update(dict(cfg.plan.env))
    env.update(dict(cfg.env))
    return env


def _become_command(cfg: RunConfig, kernel: Kernel, real_root: bool) -> None:
    """In the forked command (terminal case), before exec: the terminal's foreground,
    default signal handlers, a parent-death signal, then the privilege drops."""
    os.setpgid(0, 0)
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    signal.signal(signal.SIGTTOU, old)
    for s in FORWARDED_SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    kernel.prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
    _drop_privileges(cfg, kernel, real_root)


def _drop_privileges(cfg: RunConfig, kernel: Kernel, real_root: bool) -> None:
    """As real root (no user namespace): the bounding set trimmed to the container default
    (C.DEFAULT_CAPABILITIES, runc's set) and --uid/--gid with only that group.  Always:
    no_new_privs.  Inherited by everything the container starts."""
    if real_root:
        keep = {C.CAPABILITIES[name] for name in C.DEFAULT_CAPABILITIES}
        for cap in range(C.CAP_LAST_KNOWN + 1):
            if cap in keep:
                continue
            try:
                kernel.prctl(C.PR_CAPBSET_DROP, cap)
            except OSError as err:
                if err.errno != errno.EINVAL:   # EINVAL: a capability this kernel lacks
                    raise
        if cfg.uid or cfg.gid:
            kernel.setgroups([cfg.gid])
            kernel.setgid(cfg.gid)
            kernel.setuid(cfg.uid)
    kernel.prctl(C.PR_SET_NO_NEW_PRIVS, 1)
