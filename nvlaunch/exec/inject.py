"""Apply a Plan to a container rootfs in place: the executor of the hooks.

The caller has already entered the container's mount namespace (and user namespace,
for a rootless runtime); the rootfs is still a plain directory (before pivot_root).
Everything is done through an O_PATH fd of the rootfs: mount points are created with
make_in_root, opened with open_in_root, and mounted on `/proc/self/fd/N`, so no symlink
in the (hostile) rootfs can send a mount or a file onto the host.

Layers (the default on the real kernel): the rootfs is never written.  Every directory
that would get a new entry (a mount point, a link, the ld cache) is first covered, in
the container's mount namespace only, by a tmpfs-backed overlay: a private tmpfs is
mounted on the directory, and an overlay on top of it whose lowerdir is the directory
itself (its fd opened in root, `/proc/self/fd/N`) and whose upper and work directories
are in that tmpfs.  The mount points and links are then made in the merged view and
land in the tmpfs; mounts the runtime had already made below the directory (docker's
/etc/hosts, a volume) are bound again onto the merged view.  An existing
/etc/ld.so.cache outside a layer is covered by a bind of a tmpfs file.  Everything
goes with the container's mount namespace: `docker diff` stays empty, `docker commit`
holds no driver file, a runc or LXC rootfs is byte for byte what it was, and no stop
hook is needed.  A directory on a tmpfs of its own that is not the rootfs's (the
runtime's /dev) is written directly: it dies with the container too.

Where the kernel refuses an overlay (before Linux 5.11 in a user namespace: rootless
podman, unprivileged LXC) that directory falls back to the in-place way: what this
creates in the rootfs stays there after the container (empty mount points and links,
made again by the next start).  What is created in the rootfs is removed again if a
later step fails; mounts die with the container's mount namespace, which the runtime
tears down when the hook fails.
"""
from __future__ import annotations

import errno
import os
import stat

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.core.log import checkpoint, log
from nvlaunch.exec.inroot import make_in_root, open_in_root, replace_link, undo_at, write_new
from nvlaunch.exec.ldcache_writer import cache_bytes, write_in_root
from nvlaunch.host import ldcache
from nvlaunch.exec.mounts import TMPFS_FLAGS, tmpfs_place
from nvlaunch.host.inroot import resolve_in_root
from nvlaunch.kernel.real import REAL
from nvlaunch.plan.records import (BindDevice, BindDir, BindFile, Plan, Symlink, Tmpfs, WriteFile,
                                   bind_flags, bind_wanted)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.kernel.protocol import Kernel
    from nvlaunch.plan.records import Entry


class Injector:
    """Applies plan entries under one rootfs fd; remembers what it created."""

    def __init__(self, kernel: Kernel, rootfs: str):
        self.kernel = kernel
        self.rootfs = rootfs
        self.rootfd = kernel.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.created: list[str] = []     # container paths this run created in the rootfs
        self.mounted: list[str] = []     # container paths this run mounted on, in order
        self.replaced: list[tuple[str, str]] = []   # (container path, the link it was)
        self.dirs: dict[str, int] = {}   # parent path -> O_PATH fd, for make_in_root
        self.canon: dict[str, str] = {}  # parent path -> its canonical path in the root
        self.layers: list[str] = []      # canonical directories covered by a tmpfs layer
        self.in_layers = 0               # paths created inside the layers (not the rootfs)
        self.scratch: int | None = None  # O_PATH fd of the first layer's (hidden) tmpfs
        self.fallback: list[str] = []    # directories where the kernel refused a layer

    def close(self) -> None:
        for fd in self.dirs.values():
            self.kernel.close(fd)
        self.dirs.clear()
        if self.scratch is not None:
            self.kernel.close(self.scratch)
            self.scratch = None
        self.kernel.close(self.rootfd)

    def covered(self, cpath: str) -> bool:
        """Whether canonical container path `cpath` lies in one of the layers."""
        return any(cpath == d or cpath.startswith(d.rstrip("/") + "/") for d in self.layers)

    def _is_dir(self, path: str) -> bool:
        try:
            self.kernel.close(open_in_root(self.kernel, self.rootfd, path,
                                           os.O_PATH | os.O_DIRECTORY))
            return True
        except OSError:
            return False

    def make(self, path: str, kind: str, mode: int = 0o755, target: str | None = None) -> None:
        # Record every missing ancestor too, so an undo removes the whole new branch.
        # Work on the canonical path (links resolved inside the root), so that what a
        # link in the rootfs made us create is recorded too, and undo needs no links.
        # The leaf is created by name in its parent (a link there is replaced, never
        # followed), so its canonical path is the parent's plus the name.
        root = self.rootfs.rstrip("/")
        parent, _, name = path.rstrip("/").rpartition("/")
        missing: list[str] = []
        cparent = self.canon.get(parent)
        if cparent is None:
            cparent = resolve_in_root(self.rootfs, parent or "/")
            p = cparent
            while p not in ("", "/") and not os.path.lexists(root + p):
                missing.append(p)
                p = p.rpartition("/")[0]
        leaf = cparent.rstrip("/") + "/" + name
        if not os.path.lexists(root + leaf):
            missing.insert(0, leaf)
        old = make_in_root(self.kernel, self.rootfd, path, kind, mode, target, self.dirs)
        self.canon[parent] = cparent
        if self.covered(leaf):
            # In a layer: the rootfs never saw it, and an undo must not touch the rootfs
            # at this path once the layer is gone (the layer's mounts go first).
            self.in_layers += len(missing)
            return
        if old is not None:
            self.replaced.append((path, old))
        self.created.extend(reversed(missing))

    def mount_on(self, path: str, source: str | None, fstype: str | None, flags: int,
                 data: str | None = None, bind: bool = False, shown_source: str | None = None) -> None:
        fd = open_in_root(self.kernel, self.rootfd, path, os.O_PATH)
        try:
            if not bind:
                self.kernel.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
                self.mounted.append(path)
                return
            assert source is not None       # a bind has a source
            self.kernel.bind_mount(source, f"/proc/self/fd/{fd}", flags & C.MS_REC)
            self.mounted.append(path)
            if flags & ~C.MS_REC:
                # The fd still names the inode under the new mount: reopen the path,
                # which now leads to the mount's root, and remount that.
                self.kernel.close(fd)
                fd = open_in_root(self.kernel, self.rootfd, path, os.O_PATH)
                self.kernel.remount_bind(f"/proc/self/fd/{fd}", flags)
        except OSError as err:
            raise E.MountError("bind" if bind else "mount", shown_source or source, path,
                               C.flags_str(flags | (C.MS_BIND if bind else 0)), err) from err
        finally:
            self.kernel.close(fd)

    def undo(self) -> None:
        """Detach what mount_on() mounted, remove what make() created and put back the
        links it replaced, newest first.
        The container's mount namespace is still alive here (the runtime tears it down
        only after the hook failed), so a mount point must be unmounted before it can go."""
        for path in reversed(self.mounted):
            try:
                fd = open_in_root(self.kernel, self.rootfd, path, os.O_PATH)
            except OSError:
                continue
            try:
                self.kernel.umount2(f"/proc/self/fd/{fd}", C.MNT_DETACH)
            except OSError:
                pass
            finally:
                self.kernel.close(fd)
        self.mounted.clear()
        k, root = self.kernel, self.rootfd

        def remove(pfd: int, name: str) -> None:
            if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                k.rmdir(name, dir_fd=pfd)
            else:
                k.unlink(name, dir_fd=pfd)
        for path in reversed(self.created):
            undo_at(k, root, path, remove)
        self.created.clear()
        for path, old in reversed(self.replaced):
            def put_back(pfd: int, name: str, old: str = old) -> None:
                replace_link(k, pfd, name, old)
            undo_at(k, root, path, put_back)
        self.replaced.clear()


def inject(plan: Plan, rootfs: str, kernel: Kernel | None = None,
           layered: bool | None = None) -> Injector:
    """Apply `plan` under `rootfs` (already in the container's mount namespace).
    `layered` (default: on the real kernel; the recording fake of the unit tests cannot
    make overlays, so it gets the in-place way, which is also the fallback): the tmpfs
    layers of the module docstring.  Returns the Injector (.created: what was made in
    the rootfs itself, .layers, .fallback); undoes and raises on error."""
    kernel = kernel or REAL
    if layered is None:
        layered = kernel is REAL
    inj = Injector(kernel, rootfs)
    try:
        if layered:
            for d in layer_dirs(inj, plan):
                add_layer(inj, d)
            if inj.fallback:
                log(f"no overlay allowed here for {', '.join(inj.fallback)}: "
                    "mount points made in the rootfs")
        for entry in plan.entries:
            _apply(inj, entry)
        checkpoint("inject-ldcache")
        if plan.ldcache:
            _ldcache(inj, plan)
        return inj
    except BaseException:
        inj.undo()
        raise
    finally:
        inj.close()


def _ldcache(inj: Injector, plan: Plan) -> None:
    """The container's new ld.so.cache: written in /etc's layer when there is one (or in
    the rootfs, the fallback), else a tmpfs file bound over the existing cache."""
    kernel = inj.kernel
    try:
        etc = resolve_in_root(inj.rootfs, LDCACHE_DIR)
    except (OSError, E.NvlaunchError):
        etc = LDCACHE_DIR
    if inj.scratch is None or inj.covered(etc) or not _regular(inj, ldcache.LD_SO_CACHE):
        write_in_root(kernel, inj.rootfd, plan.ldcache)
        return
    data = cache_bytes(kernel, inj.rootfd, plan.ldcache)
    write_new(kernel, inj.scratch, "ld.so.cache", data, 0o644, replace=True)
    src = kernel.open("ld.so.cache", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=inj.scratch)
    try:
        inj.mount_on(ldcache.LD_SO_CACHE, f"/proc/self/fd/{src}", None,
                     C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV, bind=True,
                     shown_source="ld.so.cache (nvlaunch's tmpfs)")
    finally:
        kernel.close(src)


LDCACHE_DIR = "/etc"
TMPFS_MAGIC_NAME = "tmpfs"


def _regular(inj: Injector, path: str) -> bool:
    """Whether `path` is a regular file in the root (its last component not a link)."""
    try:
        fd = open_in_root(inj.kernel, inj.rootfd, path, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        inj.kernel.close(fd)


def _entry_target(inj: Injector, entry: Entry) -> str | None:
    """The container path whose parent directory `entry` would change, or None where it
    changes nothing in a directory (the entry is there already, or not wanted)."""
    if isinstance(entry, (BindFile, BindDevice, BindDir)):
        if not bind_wanted(entry, os.path.exists(entry.src)):
            return None
        try:
            fd = open_in_root(inj.kernel, inj.rootfd, entry.dst, os.O_PATH | os.O_NOFOLLOW)
        except OSError:
            return entry.dst
        try:
            return entry.dst if stat.S_ISLNK(os.fstat(fd).st_mode) else None
        finally:
            inj.kernel.close(fd)
    if isinstance(entry, Symlink):
        parent, _, name = entry.link.rpartition("/")
        try:
            pfd = open_in_root(inj.kernel, inj.rootfd, parent or "/", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return entry.link
        try:
            return None if os.readlink(name, dir_fd=pfd) == entry.target else entry.link
        except OSError:
            return entry.link
        finally:
            inj.kernel.close(pfd)
    if isinstance(entry, WriteFile):
        return entry.dst
    if isinstance(entry, Tmpfs):
        return None if entry.dst.startswith("/proc/") or inj._is_dir(entry.dst) else entry.dst
    return None


def layer_dirs(inj: Injector, plan: Plan) -> list[str]:
    """The directories (canonical container paths) to cover with a layer: for each path
    the plan adds, its nearest existing directory, unless that is on a tmpfs other than
    the rootfs's (the runtime's /dev: written directly); those inside another one of
    the set dropped.  The ld cache counts as an entry of /etc where no regular cache
    file is there to bind over, or where nothing else gets a layer."""
    tmpfs_dsts = [e.dst.rstrip("/") + "/" for e in plan.entries if isinstance(e, Tmpfs)]
    wanted: list[str] = []
    for entry in plan.entries:
        path = _entry_target(inj, entry)
        if path is None or path.startswith("/proc/") or any(path.startswith(t) for t in tmpfs_dsts):
            continue
        wanted.append(path.rstrip("/").rpartition("/")[0] or "/")
    if plan.ldcache and not _regular(inj, ldcache.LD_SO_CACHE):
        wanted.append(LDCACHE_DIR)
    found = _existing_dirs(inj, wanted)
    if plan.ldcache and not found:
        found = _existing_dirs(inj, [LDCACHE_DIR])
    out: list[str] = []
    for d in sorted(found, key=len):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return out


def _existing_dirs(inj: Injector, paths: list[str]) -> set[str]:
    found: set[str] = set()
    types = None
    root_dev = os.fstat(inj.rootfd).st_dev
    for path in dict.fromkeys(paths):
        try:
            p = resolve_in_root(inj.rootfs, path)
        except (OSError, E.NvlaunchError):
            continue
        while p not in ("", "/") and not inj._is_dir(p):
            p = p.rpartition("/")[0]
        if p in ("", "/"):
            inj.fallback.append(path)       # never a layer over the whole root
            continue
        if p in found:
            continue
        fd = open_in_root(inj.kernel, inj.rootfd, p, os.O_PATH | os.O_DIRECTORY)
        try:
            if os.fstat(fd).st_dev != root_dev:
                if types is None:
                    types = mount_types()
                if types.get(mount_id(fd)) == TMPFS_MAGIC_NAME:
                    continue                # the runtime's own tmpfs (/dev): dies with it
        finally:
            inj.kernel.close(fd)
        found.add(p)
    return found


def add_layer(inj: Injector, path: str) -> None:
    """Cover directory `path` with a tmpfs-backed overlay (module docstring); the mounts
    below it are bound again onto the merged view.  Where the kernel refuses the overlay,
    nothing stays mounted and `path` is listed in inj.fallback."""
    kernel = inj.kernel
    low = open_in_root(kernel, inj.rootfd, path, os.O_PATH | os.O_DIRECTORY)
    subs: list[tuple[str, int]] = []
    top = -1
    try:
        st = os.fstat(low)
        for rel in submounts(f"/proc/self/fd/{low}"):
            subs.append((rel, open_in_root(kernel, inj.rootfd, path.rstrip("/") + "/" + rel,
                                           os.O_PATH)))
        inj.mount_on(path, "tmpfs", "tmpfs", 0, "mode=0700", shown_source="tmpfs (layer)")
        top = open_in_root(kernel, inj.rootfd, path, os.O_PATH | os.O_DIRECTORY)
        kernel.mkdir("u", 0o700, dir_fd=top)
        try:
            kernel.chown("u", st.st_uid, st.st_gid, dir_fd=top)
        except OSError:
            pass                    # an owner not mapped in this user namespace
        kernel.chmod("u", stat.S_IMODE(st.st_mode), dir_fd=top)
        kernel.mkdir("w", 0o700, dir_fd=top)
        data = (f"lowerdir=/proc/self/fd/{low},upperdir=/proc/self/fd/{top}/u,"
                f"workdir=/proc/self/fd/{top}/w")
        if not _overlay(kernel, top, data):
            _drop_last_mount(inj)
            inj.fallback.append(path)
            return
        inj.mounted.append(path)
        inj.layers.append(path)
        for rel, sfd in subs:
            where = path.rstrip("/") + "/" + rel
            inj.mount_on(where, f"/proc/self/fd/{sfd}", None, C.MS_REC, bind=True,
                         shown_source=f"{where} (the runtime's mount)")
        if inj.scratch is None:
            inj.scratch, top = top, -1
    finally:
        for _, sfd in subs:
            kernel.close(sfd)
        if top >= 0:
            kernel.close(top)
        kernel.close(low)


def _overlay(kernel: Kernel, top: int, data: str) -> bool:
    """Mount the overlay on fd `top`; False where the kernel refuses it (in a user
    namespace before 5.11, or where trusted xattrs are refused: userxattr tried too)."""
    for extra in ("", ",userxattr"):
        try:
            kernel.mount("overlay", f"/proc/self/fd/{top}", "overlay", 0, data + extra)
            return True
        except OSError as err:
            last = err
            if err.errno not in (errno.EPERM, errno.EINVAL, errno.ENODEV, errno.EACCES,
                                 errno.EOPNOTSUPP):
                raise E.MountError("mount", "overlay", "(layer)", "0", err) from err
    log(f"overlay refused: {last}")
    return False


def _drop_last_mount(inj: Injector) -> None:
    path = inj.mounted.pop()
    fd = open_in_root(inj.kernel, inj.rootfd, path, os.O_PATH)
    try:
        inj.kernel.umount2(f"/proc/self/fd/{fd}", C.MNT_DETACH)
    finally:
        inj.kernel.close(fd)


def _unescape(field: str) -> str:
    """A mountinfo path field: octal escapes (space, tab, newline, backslash) decoded."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[tuple[int, str, str]]:
    """(mount id, mount point, fs type) of every mount of this mount namespace."""
    with open("/proc/self/mountinfo", "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    out = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split(" ")
        if not sep or len(fields) < 5:
            continue
        out.append((int(fields[0]), _unescape(fields[4]), tail.split(" ", 1)[0]))
    return out


def mount_types() -> dict[int, str]:
    return {mid: fstype for mid, _, fstype in _mountinfo()}


def mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f.read().splitlines():
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    return -1


def submounts(dir_link: str) -> list[str]:
    """The mounts below the directory at `dir_link` (a /proc/self/fd link), as paths
    relative to it; one below another is left out (a recursive bind takes it along)."""
    try:
        base = os.readlink(dir_link)
    except OSError:
        return []
    if not base.startswith("/"):
        return []
    prefix = base.rstrip("/") + "/"
    below = sorted({mp[len(prefix):] for _, mp, _ in _mountinfo() if mp.startswith(prefix)},
                   key=len)
    out: list[str] = []
    for rel in below:
        if rel and not any(rel.startswith(o + "/") for o in out):
            out.append(rel)
    return out


def _apply(inj: Injector, entry: Entry) -> None:
    if isinstance(entry, (BindFile, BindDevice, BindDir)):
        if not bind_wanted(entry, os.path.exists(entry.src)):
            return
        is_dir = isinstance(entry, BindDir) and os.path.isdir(entry.src)
        inj.make(entry.dst, "dir" if is_dir else "file", 0o755 if is_dir else 0o644)
        inj.mount_on(entry.dst, entry.src, None, bind_flags(entry), bind=True)
    elif isinstance(entry, Symlink):
        inj.make(entry.link, "link", target=entry.target)
    elif isinstance(entry, Tmpfs):
        _tmpfs(inj, entry)
    elif isinstance(entry, WriteFile):
        parent, _, name = entry.dst.rpartition("/")
        inj.make(parent, "dir")
        pfd = open_in_root(inj.kernel, inj.rootfd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            write_new(inj.kernel, pfd, name, entry.data, entry.mode, replace=True)
        finally:
            inj.kernel.close(pfd)
    else:
        raise TypeError(f"unknown plan entry {entry!r}")


def _tmpfs(inj: Injector, entry: Tmpfs) -> None:
    """A tmpfs at entry.dst (mounts.tmpfs_place: on the nearest existing ancestor under
    /proc, where nothing can be created); outside /proc a missing directory is made."""
    if not entry.dst.startswith("/proc/") and not inj._is_dir(entry.dst):
        inj.make(entry.dst, "dir")
    where, missing = tmpfs_place(entry.dst, inj._is_dir)
    inj.mount_on(where, "tmpfs", "tmpfs", TMPFS_FLAGS, "mode=0755" if missing else entry.options)
    for name in missing:
        where += "/" + name
        parent = open_in_root(inj.kernel, inj.rootfd, where.rpartition("/")[0] or "/",
                              os.O_PATH | os.O_DIRECTORY)
        try:
            inj.kernel.mkdir(name, 0o555, dir_fd=parent)
        except FileExistsError:
            pass
        finally:
            inj.kernel.close(parent)
