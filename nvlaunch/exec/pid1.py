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
from nvlaunch.core.log import checkpoint
from nvlaunch.exec.confine import capability_numbers
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
# At a terminal the command is in the shell's job with nvlaunch: the terminal's own
# signals (^C, ^\\, ^Z, a resize) reach it directly, so only these are forwarded, and
# the terminal's are ignored by P (INT, QUIT: it waits for the command) and by PID 1.
TTY_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
TTY_IGNORED_P = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)
TTY_IGNORED_INIT = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH, signal.SIGTSTP,
                    signal.SIGTTIN, signal.SIGTTOU)
ALL_SIGNALS = tuple(signal.valid_signals())


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

    def narrow(self, forwarded: tuple[int, ...], ignored: tuple[int, ...]) -> None:
        """Forward only `forwarded` from now on; `ignored` are ignored, held ones dropped."""
        for s in FORWARDED_SIGNALS + ignored:
            if s not in forwarded:
                signal.signal(s, signal.SIG_IGN)
        self.held = [s for s in self.held if s in forwarded]

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


def preload(cfg: RunConfig) -> None:
    """Import what I and W need later: everything must be imported before pivot_root
    hides the host.  exec.launch has I try it first thing, while P writes the id maps
    of a rootless container (the setuid helpers take milliseconds that I would only
    wait through; importing needs nothing the maps give), and container_init calls it
    again: a no-op, or the same failure, reported in its usual place after the maps."""
    if cfg.plan.ldcache:
        import nvlaunch.exec.ldcache_writer  # noqa: F401  (runroot merges the cache with it)
    if cfg.net == "none":
        from pyroute2 import IPRoute  # noqa: F401
    if cfg.debug:
        import traceback  # noqa: F401


def container_init(cfg: RunConfig, kernel: Kernel, forwarder: Forwarder,
                   timings: Timings | None) -> int:
    kernel.prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Not dumpable (runc's init is not either, CVE-2016-9962): the container's processes
    # cannot ptrace PID 1 nor open its /proc/1/fd, whatever capabilities they keep.
    kernel.prctl(C.PR_SET_DUMPABLE, 0)
    real_root = is_initial_root()
    preload(cfg)                    # done already where P wrote id maps meanwhile
    layout = enter_staging(kernel, cfg.tmpfs_size)
    # The writable layer, held open: once the command is gone, a full one is said plainly
    # (the command only saw ENOSPC, or "I/O error").
    layer = None if cfg.overlay else kernel.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    build_root(cfg, kernel, layout, not real_root, timings)
    if cfg.hostname:
        kernel.sethostname(cfg.hostname)
    if cfg.net == "none":
        _loopback_up()
    code = _init_loop(cfg, kernel, real_root, forwarder, timings)
    if layer is not None:
        _say_if_full(layer, cfg.tmpfs_size)
    return code


def _say_if_full(layer: int, size: str) -> None:
    try:
        st = os.fstatvfs(layer)
    except OSError:
        return
    if st.f_bavail == 0:
        os.write(2, f"nvlaunch: warning: the container's writable layer is full (--tmpfs-size "
                    f"{size}); give it more, or keep its writes on disk with --overlay DIR\n"
                    .encode())


def _loopback_up() -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


def _init_loop(cfg: RunConfig, kernel: Kernel, real_root: bool, forwarder: Forwarder,
               timings: Timings | None) -> int:
    """Start the command and stay as PID 1: forward signals, reap orphans.

    The command is started with posix_spawn (a vfork: no copy of this Python process)
    after PID 1 has dropped what the container must not have, which it inherits, with
    every signal at its default and none blocked (Python ignores SIGPIPE and SIGXFSZ:
    `yes | head -1` would print "Broken pipe").  Without a terminal it gets a process
    group of its own.  At a terminal it stays in nvlaunch's, the shell's job (see
    exec.launch: job control), and PID 1 ignores the terminal's signals, which reach the
    command directly."""
    env = _container_env(cfg)
    if timings:
        timings.mark("init")
        timings.report()
    checkpoint("run-init")
    tty = os.isatty(0)
    if tty:
        forwarder.narrow(TTY_FORWARDED, TTY_IGNORED_INIT)
    _drop_privileges(cfg, kernel, real_root)
    try:
        path = _find_command(cfg.argv[0], env)
        if tty:
            pid = os.posix_spawn(path, list(cfg.argv), env, setsigmask=(), setsigdef=ALL_SIGNALS)
        else:
            pid = os.posix_spawn(path, list(cfg.argv), env, setpgroup=0, setsigmask=(),
                                 setsigdef=ALL_SIGNALS)
    except OSError as err:
        raise E.ExecError(cfg.argv[0], err) from None
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


# What of the caller's environment enters the container: how its terminal and locale are
# to be read, and its time zone; nothing else.  The rest of a host environment (PATH,
# LD_LIBRARY_PATH, PYTHONPATH, CUDA_HOME, a conda or module system's variables) names
# host paths that mean nothing in the rootfs, or worse, something else: podman's rule,
# not Apptainer's.  --env NAME passes any other variable on purpose.
PASSED_ENV = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ")
PASSED_ENV_PREFIXES = ("LC_",)


def _container_env(cfg: RunConfig) -> dict[str, str]:
    """PATH, HOSTNAME, HOME and USER (cfg.defaults: from the rootfs's passwd), the
    caller's PASSED_ENV, then the plan's (NVIDIA_VISIBLE_DEVICES as UUIDs), then --env."""
    env = {"PATH": C.DEFAULT_PATH, "HOME": "/root" if cfg.uid == 0 else "/",
           "HOSTNAME": cfg.hostname or os.uname().nodename}
    env.update(dict(cfg.defaults))
    for key, value in os.environ.items():
        if key in PASSED_ENV or key.startswith(PASSED_ENV_PREFIXES):
            env[key] = value
    env.update(dict(cfg.plan.env))
    env.update(dict(cfg.env))
    return env


def _drop_privileges(cfg: RunConfig, kernel: Kernel, real_root: bool) -> None:
    """The bounding set trimmed to the container's (exec.confine.CONTAINER_CAPABILITIES),
    in a user namespace too: there CAP_SYS_ADMIN would let the container undo its own
    mounts (remount /sys rw: flags set inside the namespace that made them are not
    locked).  As real root, --uid/--gid with only that group.  no_new_privs.  Inherited
    by everything the container starts.  --privileged keeps every capability and leaves
    no_new_privs off, as docker's --privileged does."""
    if not cfg.privileged:
        keep = capability_numbers()
        for cap in range(C.CAP_LAST_KNOWN + 1):
            if cap in keep:
                continue
            try:
                kernel.prctl(C.PR_CAPBSET_DROP, cap)
            except OSError as err:
                if err.errno != errno.EINVAL:   # EINVAL: a capability this kernel lacks
                    raise
    if real_root and (cfg.uid or cfg.gid):
        kernel.setgroups([cfg.gid])
        kernel.setgid(cfg.gid)
        kernel.setuid(cfg.uid)
    if not cfg.privileged:
        kernel.prctl(C.PR_SET_NO_NEW_PRIVS, 1)
