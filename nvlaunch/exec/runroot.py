"""`run`'s root: the mount tree PID 1 builds and pivots into, every change through the
Kernel object.

The rootfs is never written.  PID 1 (exec.pid1) makes its mount tree private, mounts a
tmpfs and pivots into it (enter_staging): the host stays reachable under /oldroot, and
the staging tree holds /upper, /work and /newroot.  build_root() then:

1. classifies the plan once (plan_steps): each entry's container path, whether it lives
   under /dev or /proc (made once those are mounted: "late"), and its host source as
   seen from here, the bind policy (plan.records.bind_wanted) applied there and only
   there: a missing optional driver file is dropped before anything is made for it;
2. lays out the upper layer: every mount point, link and made file of the plan (and of
   the user's binds and workdir) at the path the rootfs's own symlinks lead to
   (host.inroot), each new directory with its rootfs twin's mode and owner, before any
   overlay exists, so that nothing needs write access to the rootfs;
3. mounts an overlay with the rootfs as lower layer and that layer as upper (with
   --readonly, as a second lower layer: no upper at all);
4. mounts a fresh /proc, a read-only /sys (recursively; with --net none a fresh sysfs)
   and a minimal /dev tmpfs with devpts, shm and the base device nodes bound from the
   host (mknod is refused in a user namespace); as root, unless --privileged, the
   overlay and /dev are nodev and exec.confine hides and write-protects /proc and /sys
   paths as runc's default spec does;
5. applies the plan's binds and late entries, then the user's binds;
6. pivots into the overlay and detaches the staging tree (and the host under it).

A Layout says where the staging tree is, so that build_root() runs unchanged over a
test directory with a recording kernel (tests/unit/test_runroot.py).
"""
from __future__ import annotations

import errno
import os
import stat

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.core.log import checkpoint
from nvlaunch.core.records import record
from nvlaunch.exec.confine import confine_proc_sys
from nvlaunch.exec.mounts import TMPFS_FLAGS, bind, mount, tmpfs_place
from nvlaunch.host.inroot import Resolver, resolve_in_root
from nvlaunch.plan.records import (BindDevice, BindDir, BindFile, Plan, Symlink, Tmpfs, WriteFile,
                                   bind_flags, bind_wanted)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.core.timings import Timings
    from nvlaunch.kernel.protocol import Kernel
    from nvlaunch.plan.records import Entry

# Host device nodes every container gets (bound, since mknod is refused in a user namespace).
BASE_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
# Directories the merged root must have, and their mode where the rootfs lacks them.
ROOT_DIRS = (("/proc", 0o555), ("/sys", 0o555), ("/dev", 0o755))
LATE_PREFIXES = ("/dev/", "/proc/")
OLD = "/oldroot"            # the staging tree, inside PID 1's private tmpfs
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
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # (key, value) pairs the user asked for
    binds: tuple[UserBind, ...] = ()
    workdir: str = "/"
    hostname: str | None = None
    net: str = "host"
    uid: int = 0
    gid: int = 0
    readonly: bool = False
    plan: Plan = Plan()
    debug: bool = False
    privileged: bool = False       # as root: no exec.confine (all capabilities, /proc as is)
    overlay: str | None = None     # a host directory: upper/ and work/ for persistent writes
    tmpfs_size: str = "1g"         # the staging tmpfs (the writable layer without overlay)
    defaults: tuple[tuple[str, str], ...] = ()     # HOME, USER for the uid (under env)
    etc_files: tuple[tuple[str, bytes], ...] = ()  # /etc/hosts, resolv.conf, hostname
    memo_dir: str | None = None    # the caller's plan.ldmemo directory (a host path)


@record
class Layout:
    """Where the staging tree is: `stage` holds upper/, work/ and newroot/ ("" once PID 1
    has pivoted into its staging tmpfs), and host paths are seen under `host`."""
    stage: str = ""
    host: str = OLD

    @property
    def upper(self) -> str:
        return self.stage + UPPER

    @property
    def work(self) -> str:
        return self.stage + WORK

    @property
    def new(self) -> str:
        return self.stage + NEW

    def host_path(self, path: str) -> str:
        """A host path as PID 1 sees it."""
        return self.host + os.path.abspath(path)


@record
class Step:
    """One plan entry, classified once: `kind` of what is made at `dst` ("file", "dir",
    "link", "data", "tmpfs"), `late` for /dev and /proc, `source` the host path a bind
    mounts from (as PID 1 sees it), None for what is not a bind."""
    entry: Entry
    dst: str
    kind: str
    late: bool
    source: str | None = None


def enter_staging(kernel: Kernel, size: str = "1g") -> Layout:
    """Private propagation, a staging tmpfs of `size` (the container's writable layer,
    bounded: a tmpfs is memory), and a first pivot into it."""
    mount(kernel, None, "/", None, C.MS_REC | C.MS_PRIVATE)
    stage = "/tmp" if os.path.isdir("/tmp") else "/mnt"
    mount(kernel, "tmpfs", stage, "tmpfs", C.MS_NOSUID | C.MS_NODEV, f"mode=0755,size={size}")
    kernel.chdir(stage)
    for d in (OLD, UPPER, WORK, NEW):
        kernel.mkdir("." + d, 0o755)
    kernel.pivot_root(".", "." + OLD)
    kernel.chdir("/")
    return Layout("", OLD)


def plan_steps(plan: Plan, layout: Layout) -> list[Step]:
    """The plan's entries as Steps, in order, binds whose optional source is missing
    left out (the one place the bind policy is applied for `run`)."""
    steps: list[Step] = []
    for e in plan.entries:
        if isinstance(e, Symlink):
            steps.append(Step(e, e.link, "link", e.link.startswith(LATE_PREFIXES)))
            continue
        late = e.dst.startswith(LATE_PREFIXES)
        if isinstance(e, (BindFile, BindDir, BindDevice)):
            source = layout.host_path(e.src)
            if not bind_wanted(e, os.path.exists(source)):
                continue
            kind = "dir" if isinstance(e, BindDir) and os.path.isdir(source) else "file"
            steps.append(Step(e, e.dst, kind, late, source))
        elif isinstance(e, WriteFile):
            steps.append(Step(e, e.dst, "data", late))
        elif isinstance(e, Tmpfs):
            steps.append(Step(e, e.dst, "tmpfs", late))
        else:
            raise TypeError(f"unknown plan entry {e!r}")
    return steps


class RootBuilder:
    """build_root()'s state: the kernel, the layout and the rootfs as PID 1 sees it."""

    def __init__(self, kernel: Kernel, layout: Layout, lower: str):
        self.kernel, self.layout, self.lower = kernel, layout, lower
        # One resolver for the whole layout: the rootfs does not change while we build
        # beside it (everything goes to the upper layer), so each of its directories
        # is looked at once however many entries share it.
        self.in_lower = Resolver(lower)

    def lower_path(self, container_path: str) -> str:
        """Where `container_path` lands inside the rootfs (links followed inside it)."""
        return self.in_lower.canonical(container_path)

    # -- the upper layer

    def prepare(self, container_path: str, kind: str, mode: int = 0o755,
                target: str | None = None, data: bytes | None = None) -> None:
        """Make `kind` at the upper-layer path that `container_path` lands on."""
        path = self.layout.upper + self.lower_path(container_path)
        self.mkdirs_like(path.rpartition("/")[0])
        k = self.kernel
        if kind in ("dir", "tmpfs"):
            self.mkdirs_like(path, mode)
        elif kind == "file":
            touch(k, path)
        elif kind == "link":
            assert target is not None       # a link is made with its target
            if os.path.lexists(path):
                k.unlink(path)
            k.symlink(target, path)
        elif kind == "data":
            write_file(k, path, data or b"", mode)
        else:
            raise ValueError(kind)

    def mkdirs_like(self, path: str, mode: int = 0o755) -> None:
        """mkdir -p in the upper layer.  A directory of the upper layer hides the
        attributes of its rootfs twin in the merged view, so each one takes the twin's
        mode and owner; directories new to the rootfs get `mode`."""
        if os.path.isdir(path):
            return
        parent = path.rpartition("/")[0]
        if parent and parent != self.layout.upper:
            self.mkdirs_like(parent)
        self.kernel.mkdir(path, 0o700)
        if not self.copy_attrs(self.lower + path[len(self.layout.upper):], path):
            self.kernel.chmod(path, mode)

    def copy_attrs(self, src: str, dst: str) -> bool:
        """Mode and owner of `src` onto `dst`; False if `src` does not exist.  An owner
        the user namespace does not map (it shows as the overflow id) is left as is."""
        try:
            st = os.lstat(src)          # never through a link: it would lead out of the rootfs
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False
        self.kernel.chmod(dst, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            try:
                self.kernel.chown(dst, st.st_uid, st.st_gid)
            except OSError:
                pass
        return True

    # -- after the overlay: entries under /dev and /proc, in filesystems we mounted

    def prepare_late(self, step: Step, target: str) -> None:
        k, e = self.kernel, step.entry
        if step.kind == "tmpfs":
            assert isinstance(e, Tmpfs)
            new = self.layout.new
            where, missing = tmpfs_place(step.dst, lambda p: os.path.isdir(new + p))
            mount(k, "tmpfs", new + where, "tmpfs", TMPFS_FLAGS,
                  "mode=0755" if missing else e.options, shown_target=where)
            for name in missing:
                where += "/" + name
                k.mkdir(new + where, 0o555)
            return
        self.makedirs(os.path.dirname(target))
        if step.kind == "data":
            assert isinstance(e, WriteFile)
            write_file(k, target, e.data, e.mode)
        elif step.kind == "link":
            assert isinstance(e, Symlink)
            k.symlink(e.target, target)
        elif step.kind == "dir":
            self.makedirs(target)
        else:
            touch(k, target)

    def makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        self.makedirs(os.path.dirname(path))
        self.kernel.mkdir(path, 0o755)


def build_root(cfg: RunConfig, kernel: Kernel, layout: Layout, rootless: bool,
               timings: Timings | None = None) -> None:
    """Steps 1-6 of the module docstring; the caller has entered the staging tree."""
    def mark(phase: str) -> None:
        if timings:
            timings.mark(phase)
        checkpoint("run-" + phase)
    mark("staging")
    lower = layout.host_path(cfg.rootfs)
    b = RootBuilder(kernel, layout, lower)
    steps = plan_steps(cfg.plan, layout)

    # 2. The upper layer, before the overlay exists.
    b.copy_attrs(lower, layout.upper)       # the merged "/" keeps the rootfs's mode and owner
    for d, mode in ROOT_DIRS:
        # /proc, /sys and /dev are where nvlaunch mounts by name: whatever the rootfs has
        # there that is not a plain directory (a link, above all) is hidden by one.
        if not stat.S_ISDIR(_lstat_mode(lower + d)):
            b.mkdirs_like(layout.upper + d, mode)
    # /tmp always lives in our layer: with the rootfs's mode, but owned by us where its
    # owner is not mapped, so that it stays writable (a copy-up of a directory whose
    # owner the user namespace cannot map fails with EOVERFLOW).
    b.prepare("/tmp", "dir", 0o1777)
    for s in steps:
        if not s.late:
            e = s.entry
            b.prepare(s.dst, s.kind, getattr(e, "mode", 0o755), target=getattr(e, "target", None),
                      data=getattr(e, "data", None))
    mark("layer")
    for path, data in cfg.etc_files:
        b.prepare(path, "data", 0o644, data=data)
    if cfg.plan.ldcache:
        b.prepare("/etc/ld.so.cache", "data", 0o644, data=_merged_cache(kernel, lower, cfg.plan, layout,
                                                                 cfg.memo_dir))
        mark("ldcache")
    for ub in cfg.binds:
        src = layout.host_path(ub.src)
        if not os.path.exists(src):
            raise E.UsageError(f"--bind {ub.src}:{ub.dst}: {ub.src}: no such file or directory")
        b.prepare(ub.dst, "dir" if os.path.isdir(src) else "file")
    if cfg.workdir != "/":
        there = lower + b.lower_path(cfg.workdir)
        if os.path.lexists(there) and not os.path.isdir(there):
            raise E.UsageError(f"--workdir {cfg.workdir}: not a directory in the rootfs")
        b.prepare(cfg.workdir, "dir")

    # 3. The overlay (nodev for a confined root container: exec.confine).
    confined = not rootless and not cfg.privileged
    overlay = layout.host_path(cfg.overlay) if cfg.overlay else None
    _mount_overlay(kernel, layout, lower, cfg.readonly, rootless, C.MS_NODEV if confined else 0,
                   overlay)
    mark("overlay")

    # 4. /proc, /sys, /dev.
    new = layout.new
    mount(kernel, "proc", new + "/proc", "proc", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)
    if cfg.net == "none":
        # Our own network namespace: a fresh sysfs shows its interfaces, not the host's
        # (allowed in a user namespace that owns the network namespace).
        mount(kernel, "sysfs", new + "/sys", "sysfs",
              C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)
    else:
        bind(kernel, layout.host + "/sys", new + "/sys",
             C.MS_REC | C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, "/sys", "/sys")
        _readonly_tree(kernel, new + "/sys")
    _mount_dev(kernel, layout)
    if confined:
        confine_proc_sys(kernel, new, layout.host + "/dev/null")
    mark("base-mounts")

    # 5. The plan: driver files, device nodes, /proc/driver/nvidia; then the user's binds.
    # One resolver walks the merged tree for all of them, so that the directories most
    # binds share are looked at once (~1.5 ms of 50 binds).  Its memo is dropped wherever
    # the tree's names can change under it: a late step creates entries, a directory
    # bind covers a directory; a file or device bound over a mount point changes no name.
    in_new = Resolver(new)
    for s in steps:
        target = new + (s.dst if s.late else in_new.canonical(s.dst))
        if s.late:
            b.prepare_late(s, target)
            in_new.memo.clear()
        if s.source is not None:
            e = s.entry
            assert isinstance(e, (BindFile, BindDir, BindDevice))   # what has a source
            bind(kernel, s.source, target, bind_flags(e), e.src, s.dst)
            if s.kind == "dir":
                in_new.memo.clear()
    for ub in cfg.binds:
        target = new + resolve_in_root(new, ub.dst)
        bind(kernel, layout.host_path(ub.src), target,
             C.MS_REC | (C.MS_RDONLY if ub.readonly else 0), ub.src, ub.dst)
        if ub.readonly:          # the mounts under the source too, as docker's :ro
            _readonly_tree(kernel, target, C.MOUNT_ATTR_RDONLY)
    mark("binds")

    # 6. Into the new root; the staging tree (and the host under it) is detached.
    kernel.chdir(new)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", C.MNT_DETACH)
    kernel.chdir("/")
    try:
        kernel.chdir(cfg.workdir)
    except OSError as err:
        raise E.UsageError(f"--workdir {cfg.workdir}: {err.strerror}", errno=err.errno) from err
    mark("pivot")


def touch(kernel: Kernel, path: str) -> None:
    """An empty file at `path` (a mount point), kept if it exists."""
    kernel.close(kernel.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def write_file(kernel: Kernel, path: str, data: bytes, mode: int) -> None:
    """`path` holding `data`, with `mode` (whatever the umask)."""
    fd = kernel.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        kernel.write_all(fd, data)
    finally:
        kernel.close(fd)
    kernel.chmod(path, mode)


def _mount_overlay(kernel: Kernel, layout: Layout, lower: str, readonly: bool, rootless: bool,
                   flags: int = 0, persistent: str | None = None) -> None:
    """The merged root.  With `persistent` (--overlay DIR, as PID 1 sees it) our layer
    becomes a lower layer above the rootfs and DIR/upper takes the container's writes."""
    esc = _overlay_escape
    if persistent:
        opts = (f"lowerdir={esc(layout.upper)}:{esc(lower)},upperdir={esc(persistent + '/upper')},"
                f"workdir={esc(persistent + '/work')}")
    elif readonly:
        opts = f"lowerdir={esc(layout.upper)}:{esc(lower)}"
    else:
        opts = f"lowerdir={esc(lower)},upperdir={esc(layout.upper)},workdir={esc(layout.work)}"
    try:
        mount(kernel, "overlay", layout.new, "overlay", flags, opts + (",userxattr" if rootless else ""))
    except E.MountError:
        if not rootless:
            raise
        try:          # kernels before 5.11 have no userxattr (and no overlay in a userns)
            mount(kernel, "overlay", layout.new, "overlay", flags, opts)
        except E.MountError as err:
            err.hint = err.hint or ("overlayfs in a user namespace needs Linux 5.11 or newer "
                                    f"(this is {os.uname().release})")
            raise


def _mount_dev(kernel: Kernel, layout: Layout) -> None:
    dev = layout.new + "/dev"
    # nodev: the nodes in it are binds of the host's (each its own mount, with its flags)
    mount(kernel, "tmpfs", dev, "tmpfs", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, "mode=0755,size=65536k")
    for name in BASE_DEVICES:
        if os.path.exists(layout.host + "/dev/" + name):
            touch(kernel, dev + "/" + name)
            bind(kernel, layout.host + "/dev/" + name, dev + "/" + name, 0, "/dev/" + name,
                 "/dev/" + name)
    for d in ("pts", "shm"):
        kernel.mkdir(dev + "/" + d, 0o755)
    mount(kernel, "devpts", dev + "/pts", "devpts", C.MS_NOSUID | C.MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")
    mount(kernel, "shm", dev + "/shm", "tmpfs", C.MS_NOSUID | C.MS_NODEV, "mode=1777,size=65536k")
    for link, target in DEV_LINKS:
        kernel.symlink(target, dev + "/" + link)


def _readonly_tree(kernel: Kernel, path: str,
                   attrs: int = C.MOUNT_ATTR_RDONLY | C.MOUNT_ATTR_NOSUID | C.MOUNT_ATTR_NODEV) -> None:
    """Make every mount under `path` read-only too (the host's cgroup mounts under /sys
    would otherwise stay writable for a root container; a --bind :ro of a tree with
    mounts in it, likewise)."""
    try:
        kernel.mount_setattr(-100, path, C.AT_RECURSIVE, attrs, 0)
    except OSError as err:
        if err.errno != errno.ENOSYS:   # before 5.12 only the top of the tree is read-only
            raise E.MountError("mount_setattr", None, path, "AT_RECURSIVE|MOUNT_ATTR_RDONLY", err) from err


def _merged_cache(kernel: Kernel, lower: str, plan: Plan, layout: Layout,
                  memo_dir: str | None) -> bytes:
    """The container's ld.so.cache with the plan's libraries first, as the hooks make it
    (exec.ldcache_writer.cache_bytes), seen from PID 1.  Imported here: a GPU start only."""
    from nvlaunch.exec.ldcache_writer import cache_bytes
    rootfd = kernel.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return cache_bytes(kernel, rootfd, plan.ldcache, layout.host + "/proc",
                           layout.host + memo_dir if memo_dir else None)
    finally:
        kernel.close(rootfd)


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _overlay_escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
