"""Apply a Plan to a container rootfs in place: the executor of the hooks.

The caller has already entered the container's mount namespace (and user namespace,
for a rootless runtime); the rootfs is still a plain directory (before pivot_root).
Everything is done through an O_PATH fd of the rootfs: mount points are created with
make_in_root, opened with open_in_root, and mounted on `/proc/self/fd/N`, so no symlink
in the (hostile) rootfs can send a mount or a file onto the host.  What this creates in
the rootfs is removed again if a later step fails; mounts die with the container's
mount namespace, which the runtime tears down when the hook fails.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core import consts as C
from nvlaunch.core import errors as E
from nvlaunch.exec.inroot import make_in_root, open_in_root, write_new
from nvlaunch.exec.ldcache_writer import write_in_root
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
        self.created: list[str] = []     # container paths this run created, in order
        self.mounted: list[str] = []     # container paths this run mounted on, in order
        self.dirs: dict[str, int] = {}   # parent path -> O_PATH fd, for make_in_root
        self.canon: dict[str, str] = {}  # parent path -> its canonical path in the root

    def close(self) -> None:
        for fd in self.dirs.values():
            self.kernel.close(fd)
        self.dirs.clear()
        self.kernel.close(self.rootfd)

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
        make_in_root(self.kernel, self.rootfd, path, kind, mode, target, self.dirs)
        self.canon[parent] = cparent
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
        """Detach what mount_on() mounted, then remove what make() created, newest first.
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
        for path in reversed(self.created):
            parent, _, name = path.rpartition("/")
            try:
                pfd = open_in_root(self.kernel, self.rootfd, parent or "/", os.O_PATH | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self.kernel.rmdir(name, dir_fd=pfd)
                else:
                    self.kernel.unlink(name, dir_fd=pfd)
            except OSError:
                pass
            finally:
                self.kernel.close(pfd)
        self.created.clear()


def inject(plan: Plan, rootfs: str, kernel: Kernel | None = None) -> Injector:
    """Apply `plan` under `rootfs` (already in the container's mount namespace).
    Returns the Injector (its .created says what was made); undoes and raises on error."""
    kernel = kernel or REAL
    inj = Injector(kernel, rootfs)
    try:
        for entry in plan.entries:
            _apply(inj, entry)
        if plan.ldcache:
            write_in_root(kernel, inj.rootfd, plan.ldcache)
        return inj
    except BaseException:
        inj.undo()
        raise
    finally:
        inj.close()


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
