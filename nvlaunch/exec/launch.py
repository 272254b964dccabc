"""`nvlaunch run`: a rootless container on a rootfs directory, GPUs included.

Processes:  nvlaunch (P, the caller) --clone--> init (I, PID 1 of the new pid namespace)
--fork--> the command (W).

P   clones I with new user (when not root), mount, pid, ipc, uts (and net) namespaces,
    writes I's id maps, then waits, forwarding signals to I.  It exits with I's status.
I   builds the container's mount tree and pivots into it; then it forks W and stays as
    PID 1: it forwards signals to W, reaps orphans, and exits with W's status.
W   drops what the container must not have (bounding set, no_new_privs) and execs.

The rootfs is never written: I mounts a tmpfs in its private mount namespace, pivots
into it (the host stays reachable under /oldroot), and lays an overlay with the rootfs
as its lower layer and a tmpfs upper layer holding every mount point, link and file
the container needs (created there *before* the overlay is mounted, so they need no
write access to the rootfs).  With --readonly that layer becomes a second lower layer
and the overlay has no upper at all.  Then /proc, /sys, /dev, the plan's binds and the
user's binds, and a second pivot_root into the overlay that drops the staging tree.

Errors in I or W travel to P as one JSON record on a pipe; P prints them as one line.
"""
from __future__ import annotations

import errno
import os
import _signal as signal   # the C module: `signal` would import enum (2 ms a launch)
import stat
import sys
from nvlaunch.core.records import record

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.host.view import is_initial_root
from nvlaunch.plan.records import (BindDevice, BindDir, BindFile, Plan, Symlink, Tmpfs, WriteFile, bind_flags,
                           source_usable)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
# Host device nodes every container gets (bound, since mknod is refused in a user namespace).
BASE_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# Staging tree inside I's private tmpfs (never visible on the host).
OLD = "/oldroot"
UPPER = "/upper"
WORK = "/work"
NEW = "/newroot"


@record
class UserBind:
    src: str
    dst: str
    readonly: bool = False


@record
class RunConfig:
    rootfs: str
    argv: tuple
    env: tuple = ()                  # (key, value) pairs the user asked for
    binds: tuple = ()                # UserBind
    workdir: str = "/"
    hostname: str | None = None
    net: str = "host"
    uid: int = 0
    gid: int = 0
    readonly: bool = False
    plan: Plan = Plan()
    debug: bool = False


def run(cfg: RunConfig, kernel=None, timings=None) -> int:
    """Start the container and return its exit status (128+N for a signal)."""
    if kernel is None:
        from nvlaunch.kernel.real import REAL as kernel
    rootless = os.geteuid() != 0
    flags = C.CLONE_NEWNS | C.CLONE_NEWPID | C.CLONE_NEWIPC | C.CLONE_NEWUTS
    if rootless:
        flags |= C.CLONE_NEWUSER
    if cfg.net == "none":
        flags |= C.CLONE_NEWNET
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    if timings:
        timings.mark("prepare")
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
        hint = (userns_restriction() if rootless else None) or E.hint_for(err.errno, "unshare")
        raise E.NamespaceError(f"cannot create namespaces: {err.strerror}", hint) from err
    if pid == 0:  # I, PID 1 of the new pid namespace
        forwarder = _Forwarder()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(go_w)
        os.close(err_r)
        code = E.EXIT_SETUP
        try:
            if os.read(go_r, 1) != b"g":   # P died or gave up before mapping us
                os._exit(E.EXIT_SETUP)
            os.close(go_r)
            if timings:
                timings.mark("namespaces")
            code = _container_init(cfg, kernel, forwarder, timings)
        except BaseException as exc:  # noqa: BLE001 - everything goes to P as one record
            code = _report(err_w, exc, cfg.debug)
        os._exit(code)
    os.close(go_r)
    os.close(err_w)
    try:
        if rootless:
            from nvlaunch.kernel.idmap import write_maps
            write_maps(kernel, pid, cfg.uid, cfg.gid)
        os.write(go_w, b"g")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(err_r)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    os.close(go_w)
    status = _wait_forwarding(pid, mask)
    if timings:   # P's own clock: clone to PID 1 gone, its mount namespace torn down
        timings.report_end("container")
    with os.fdopen(err_r, "rb") as f:
        record = f.read()
    _restore_foreground()
    if record:
        _raise_record(record, userns_restriction() if rootless else None)
    return _exit_code(status)


# Kernel settings that refuse or cripple unprivileged user namespaces, and the fix.
USERNS_SYSCTLS = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0",
     "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile "
     "granting `userns` to nvlaunch's python (Ubuntu 24.04)"),
)


def userns_restriction() -> str | None:
    """A hint naming the setting that restricts unprivileged user namespaces, if one does."""
    for path, bad, fix in USERNS_SYSCTLS:
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return (f"unprivileged user namespaces are restricted here "
                            f"({path[len('/proc/sys/'):].replace('/', '.')} = {bad}); fix: {fix}")
        except OSError:
            continue
    return None


# ---- P side -----------------------------------------------------------------------------

def _wait_forwarding(pid: int, mask) -> int:
    forwarder = _Forwarder(pid)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except ChildProcessError:
                return 0
    finally:
        forwarder.restore()


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _restore_foreground() -> None:
    """Give the terminal back to our process group if the container's command took it."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) != os.getpgrp():
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, os.getpgrp())
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


def _raise_record(record: bytes, restriction: str | None = None):
    err, trace = E.unpack_error(record)
    if trace:
        sys.stderr.write(trace)
    if restriction and "not permitted" in str(err):
        err.hint = restriction
    raise err


# ---- I side: the mount tree ---------------------------------------------------------------

def _container_init(cfg: RunConfig, kernel, forwarder: "_Forwarder", timings) -> int:
    kernel.prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
    real_root = is_initial_root()
    # Everything I and W import must be imported before pivot_root hides the host.
    if real_root:
        import prctl  # noqa: F401  (the bounding set, by capability name; root only)
    if cfg.net == "none":
        from pyroute2 import IPRoute  # noqa: F401
    if cfg.debug:
        import traceback  # noqa: F401
    _build_root(cfg, kernel, not real_root, timings)
    if cfg.hostname:
        kernel.sethostname(cfg.hostname)
    if cfg.net == "none":
        _loopback_up()
    return _init_loop(cfg, kernel, real_root, forwarder, timings)


class _Forwarder:
    """Handlers that forward FORWARDED_SIGNALS to `pid`: P's to PID 1, and PID 1's to the
    command, installed in PID 1 first thing after clone.

    The kernel drops a signal sent to a pid namespace's init unless init has a handler
    for it, so a handler that only came after the command started would lose the signals
    sent in between (the command may already be running and visible).  Until the target
    is known (start()) they are held, then forwarded in order."""

    def __init__(self, pid: int | None = None):
        self.pid = pid
        self.held = []
        self.old = {s: signal.signal(s, self.handle) for s in FORWARDED_SIGNALS}

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def handle(self, signum, _frame):
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


def _mount(kernel, source, target, fstype, flags, data=None, op="mount"):
    try:
        kernel.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise E.MountError(op, source, target, C.flags_str(flags), err) from err


def _bind(kernel, source, target, flags, shown_source=None, shown_target=None):
    try:
        kernel.bind_mount(source, target, flags)
    except OSError as err:
        raise E.MountError("bind", shown_source or source, shown_target or target,
                           C.flags_str(C.MS_BIND | flags), err) from err


def _host(path: str) -> str:
    """A host path as I sees it after the first pivot."""
    return OLD + os.path.abspath(path)


def _build_root(cfg: RunConfig, kernel, rootless: bool, timings=None) -> None:
    from nvlaunch.host.inroot import resolve_in_root
    if cfg.plan.ldcache:   # imported now: after the first pivot the host's files are gone
        from nvlaunch.exec.ldcache_writer import merged_cache
    # 1. Private propagation, a staging tmpfs, and a first pivot into it.
    _mount(kernel, None, "/", None, C.MS_REC | C.MS_PRIVATE)
    stage = "/tmp" if os.path.isdir("/tmp") else "/mnt"
    _mount(kernel, "tmpfs", stage, "tmpfs", C.MS_NOSUID | C.MS_NODEV, "mode=0755")
    os.chdir(stage)
    for d in (OLD, UPPER, WORK, NEW):
        os.mkdir("." + d, 0o755)
    kernel.pivot_root(".", "." + OLD)
    os.chdir("/")

    lower = _host(cfg.rootfs)
    plan = cfg.plan
    mark = timings.mark if timings else (lambda phase: None)
    mark("staging")

    # 2. The upper layer: every mount point, link and made file, before the overlay exists.
    def upper_path(container_path: str) -> str:
        return UPPER + resolve_in_root(lower, container_path)

    def prepare(container_path: str, kind: str, mode: int = 0o755, target=None, data=None):
        path = upper_path(container_path)
        _mkdirs_like(path.rpartition("/")[0], lower)
        if kind == "dir":
            _mkdirs_like(path, lower, mode)
        elif kind == "file":
            with open(path, "ab"):
                pass
        elif kind == "link":
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(target, path)
        elif kind == "data":
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, mode)

    _copy_attrs(lower, UPPER)          # the merged "/" keeps the rootfs's mode and owner
    for d, mode in (("/proc", 0o555), ("/sys", 0o555), ("/dev", 0o755)):
        if not os.path.isdir(lower + resolve_in_root(lower, d)):
            prepare(d, "dir", mode)
    # /tmp always lives in our layer: with the rootfs's mode, but owned by us where its
    # owner is not mapped, so that it stays writable (a copy-up of a directory whose
    # owner the user namespace cannot map fails with EOVERFLOW).
    prepare("/tmp", "dir", 0o1777)
    late = set()   # ids of entries under /dev and /proc: applied once those are mounted
    for entry in plan.entries:
        dst = entry.link if isinstance(entry, Symlink) else entry.dst
        if dst.startswith(("/dev/", "/proc/")):
            late.add(id(entry))
        elif isinstance(entry, (BindFile, BindDevice)):
            prepare(dst, "file")
        elif isinstance(entry, BindDir):
            prepare(dst, "dir" if os.path.isdir(entry.src) else "file")
        elif isinstance(entry, Symlink):
            prepare(dst, "link", target=entry.target)
        elif isinstance(entry, WriteFile):
            prepare(dst, "data", entry.mode, data=entry.data)
        elif isinstance(entry, Tmpfs):
            prepare(dst, "dir")
    mark("layer")
    if plan.ldcache:
        prepare("/etc/ld.so.cache", "data", 0o644,
                data=merged_cache(lower, plan.ldcache))
        mark("ldcache")
    for b in cfg.binds:
        src = _host(b.src)
        if not os.path.exists(src):
            raise E.UsageError(f"--bind {b.src}:{b.dst}: {b.src}: no such file or directory")
        prepare(b.dst, "dir" if os.path.isdir(src) else "file")
    if cfg.workdir != "/":
        there = lower + resolve_in_root(lower, cfg.workdir)
        if os.path.lexists(there) and not os.path.isdir(there):
            raise E.UsageError(f"--workdir {cfg.workdir}: not a directory in the rootfs")
        prepare(cfg.workdir, "dir")

    # 3. The overlay: rootfs below, our layer above (or as a second lower layer).
    esc = _overlay_escape
    if cfg.readonly:
        opts = f"lowerdir={esc(UPPER)}:{esc(lower)}"
    else:
        opts = f"lowerdir={esc(lower)},upperdir={UPPER},workdir={WORK}"
    try:
        _mount(kernel, "overlay", NEW, "overlay", 0, opts + (",userxattr" if rootless else ""))
    except E.MountError:
        if not rootless:
            raise
        try:
            _mount(kernel, "overlay", NEW, "overlay", 0, opts)
        except E.MountError as err:
            err.hint = err.hint or ("overlayfs in a user namespace needs Linux 5.11 or newer "
                                    f"(this is {os.uname().release})")
            raise

    mark("overlay")

    # 4. /proc, /sys, /dev.
    _mount(kernel, "proc", NEW + "/proc", "proc", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)
    if cfg.net == "none":
        # Our own network namespace: a fresh sysfs shows its interfaces, not the host's
        # (allowed in a user namespace that owns the network namespace).
        _mount(kernel, "sysfs", NEW + "/sys", "sysfs",
               C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)
    else:
        _bind(kernel, OLD + "/sys", NEW + "/sys",
              C.MS_REC | C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, "/sys", "/sys")
        _readonly_tree(kernel, NEW + "/sys")
    dev = NEW + "/dev"
    _mount(kernel, "tmpfs", dev, "tmpfs", C.MS_NOSUID | C.MS_NOEXEC, "mode=0755,size=65536k")
    for name in BASE_DEVICES:
        if os.path.exists(OLD + "/dev/" + name):
            _touch(dev + "/" + name)
            _bind(kernel, OLD + "/dev/" + name, dev + "/" + name, 0, "/dev/" + name)
    for d in ("pts", "shm"):
        os.mkdir(dev + "/" + d, 0o755)
    _mount(kernel, "devpts", dev + "/pts", "devpts", C.MS_NOSUID | C.MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620")
    _mount(kernel, "shm", dev + "/shm", "tmpfs", C.MS_NOSUID | C.MS_NODEV, "mode=1777,size=65536k")
    for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + link)

    mark("base-mounts")

    # 5. The plan: driver files, device nodes, /proc/driver/nvidia.
    for entry in plan.entries:
        dst = entry.link if isinstance(entry, Symlink) else entry.dst
        is_late = id(entry) in late
        target = NEW + (dst if is_late else resolve_in_root(NEW, dst))
        if is_late:
            _prepare_late(kernel, entry, target)
        if isinstance(entry, (BindFile, BindDir, BindDevice)):
            src = _host(entry.src)
            if source_usable(entry, src):
                _bind(kernel, src, target, bind_flags(entry), entry.src, dst)

    # 6. The user's binds.
    for b in cfg.binds:
        target = NEW + resolve_in_root(NEW, b.dst)
        _bind(kernel, _host(b.src), target, C.MS_REC | (C.MS_RDONLY if b.readonly else 0),
              b.src, b.dst)

    mark("binds")

    # 7. Into the new root; the staging tree (and the host under it) is detached.
    os.chdir(NEW)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", C.MNT_DETACH)
    os.chdir("/")
    try:
        os.chdir(cfg.workdir)
    except OSError as err:
        raise E.UsageError(f"--workdir {cfg.workdir}: {err.strerror}") from err
    mark("pivot")


def _readonly_tree(kernel, path: str) -> None:
    """Make every mount under `path` read-only too (the host's cgroup mounts under /sys
    would otherwise stay writable for a root container)."""
    try:
        kernel.mount_setattr(-100, path, C.AT_RECURSIVE,
                             C.MOUNT_ATTR_RDONLY | C.MOUNT_ATTR_NOSUID | C.MOUNT_ATTR_NODEV, 0)
    except OSError as err:
        if err.errno != errno.ENOSYS:   # before 5.12 only the top of the tree is read-only
            raise E.MountError("mount_setattr", None, path, "AT_RECURSIVE|MOUNT_ATTR_RDONLY", err) from err


def _prepare_late(kernel, entry, target: str) -> None:
    """Entries under /dev and /proc live in filesystems we just mounted ourselves."""
    if isinstance(entry, Tmpfs):
        where = target
        missing = []
        while not os.path.isdir(where):      # e.g. /proc/driver/nvidia on a host without it
            where, _, name = where.rpartition("/")
            missing.insert(0, name)
        _mount(kernel, "tmpfs", where, "tmpfs", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC,
               "mode=0755" if missing else entry.options)
        for name in missing:
            where += "/" + name
            os.mkdir(where, 0o555)
    elif isinstance(entry, WriteFile):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(entry.data)
        os.chmod(target, entry.mode)
    elif isinstance(entry, Symlink):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(entry.target, target)
    elif isinstance(entry, BindDir):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _touch(target)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _mkdirs_like(path: str, lower: str, mode: int = 0o755) -> None:
    """mkdir -p in the upper layer.  A directory of the upper layer hides the attributes
    of its rootfs twin in the merged view, so each one takes the twin's mode and owner;
    directories new to the rootfs get `mode`."""
    if os.path.isdir(path):
        return
    parent = path.rpartition("/")[0]
    if parent and parent != UPPER:
        _mkdirs_like(parent, lower)
    os.mkdir(path, 0o700)
    if not _copy_attrs(lower + path[len(UPPER):], path):
        os.chmod(path, mode)


def _copy_attrs(src: str, dst: str) -> bool:
    """Mode and owner of `src` onto `dst`; False if `src` does not exist.  An owner the
    user namespace does not map (it shows as the overflow id) is left as is."""
    try:
        st = os.stat(src)
    except OSError:
        return False
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.chown(dst, st.st_uid, st.st_gid)
        except OSError:
            pass
    return True


def _overlay_escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _loopback_up() -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


# ---- I side: PID 1 ----------------------------------------------------------------------

def _init_loop(cfg: RunConfig, kernel, real_root: bool, forwarder: "_Forwarder",
               timings) -> int:
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
    return _exit_code(status)


def _find_command(name: str, env: dict) -> str:
    """`name` looked up in the container's PATH as execvp(3) would: the first executable
    regular file; EACCES if only non-executable ones exist; ENOENT if none."""
    if "/" in name:
        return name
    denied = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
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


def _execvpe(name: str, argv: list, env: dict) -> None:
    """execvpe(3) over the container's PATH.  Written out because os.execvpe imports the
    `warnings` module on its way, and after pivot_root no module can be imported.  Like
    execvp: a missing file moves on, EACCES is remembered, ENOENT if nothing was found."""
    if "/" in name:
        os.execve(name, argv, env)
    denied = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execve(os.path.join(directory or ".", name), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as err:
            denied = err
    raise denied or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _container_env(cfg: RunConfig) -> dict:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if cfg.uid == 0 else "/",
           "HOSTNAME": cfg.hostname or os.uname().nodename}
    term = os.environ.get("TERM")
    if term:
        env["TERM"] = term
    env.update(dict(cfg.plan.env))
    env.update(dict(cfg.env))
    return env


def _become_command(cfg: RunConfig, kernel, real_root: bool) -> None:
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


def _drop_privileges(cfg: RunConfig, kernel, real_root: bool) -> None:
    """As real root (no user namespace): the bounding set trimmed to the container default
    (by name, with python-prctl) and --uid/--gid with only that group.  Always:
    no_new_privs.  Inherited by everything the container starts."""
    if real_root:
        import prctl
        keep = set(C.DEFAULT_CAPABILITIES)
        for cap in prctl.ALL_CAP_NAMES:
            if cap not in keep:
                prctl.capbset_drop(getattr(prctl, "CAP_" + cap.upper()))
        if cfg.uid or cfg.gid:
            os.setgroups([cfg.gid])
            os.setgid(cfg.gid)
            os.setuid(cfg.uid)
    kernel.prctl(C.PR_SET_NO_NEW_PRIVS, 1)
