"""Paths inside a container rootfs, which is hostile: every lookup stays inside it.

Two ways in, both refusing to leave the root whatever symlinks the rootfs holds:
- `open_in_root(rootfd, path)`: openat2(2) with RESOLVE_IN_ROOT (Linux 5.6+), so `..` and
  absolute symlinks resolve against the rootfs, the way the container will see them;
- without openat2 (ENOSYS, or EPERM from a seccomp profile), `host.inroot.walk_open`:
  the same walk one component at a time under directory fds, racing nothing;
- `resolve_in_root(root, path)` only computes where a path *would* land.
Mount targets are opened O_PATH through these and mounted on `/proc/self/fd/N`, so what
gets mounted on is the inode that was checked (runc's `WithProcfd`, crun's `safe_openat`).
"""
from __future__ import annotations

import errno
import os
import stat

from nvlaunch.core.consts import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
from nvlaunch.core.files import remove_stale, replace_in_dir, temp_name
from nvlaunch.core.errors import ContainerPathError
from nvlaunch.host.inroot import MAXSYMLINKS, resolve_in_root, walk_open


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nvlaunch.kernel.protocol import Kernel


def open_in_root(kernel: Kernel, rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """An fd for `path` resolved inside the root at `rootfd` (O_CLOEXEC always)."""
    flags |= os.O_CLOEXEC
    try:
        return kernel.openat2(rootfd, path.lstrip("/") or ".", flags, 0,
                              RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp'd openat2
            raise
    return walk_open(rootfd, path, flags)


def make_in_root(kernel: Kernel, rootfd: int, path: str, kind: str, mode: int = 0o755,
                 target: str | None = None, dirs: dict[str, int] | None = None) -> str | None:
    """Create `path` inside the root: kind "dir", "file" (an empty mount point) or "link"
    (-> target).  Parents are created as needed, each one opened inside the root, so a
    symlink in the rootfs can never make us create something on the host.  An existing
    entry of the right kind is left alone; a link is replaced only if it differs.
    Returns the target of a link this replaced (so that an undo can put it back), else
    None.  `dirs` (parent path -> O_PATH fd, owned by the caller) keeps the parent
    directories opened by earlier calls: most entries of a plan share a few directories."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise ContainerPathError(f"{path}: not a usable container path")
    parent = parent or "/"
    pfd = dirs.get(parent) if dirs is not None else None
    if pfd is None:
        pfd = mkdirs_in_root(kernel, rootfd, parent)
        if dirs is not None:
            dirs[parent] = pfd
    try:
        if kind == "dir":
            try:
                kernel.mkdir(name, mode, dir_fd=pfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                    raise ContainerPathError(f"{path}: exists in the rootfs and is not a directory") from None
            return None
        if kind == "file":
            try:
                kernel.close(kernel.open(name, _NEW_FILE, mode, dir_fd=pfd))
                return None
            except FileExistsError:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise ContainerPathError(f"{path}: exists in the rootfs as a directory") from None
            if not stat.S_ISLNK(st.st_mode):
                return None                  # any other file is a mount point as it is
            # A link where a file mount point goes: replaced (never followed).
            old = os.readlink(name, dir_fd=pfd)
            kernel.unlink(name, dir_fd=pfd)
            kernel.close(kernel.open(name, _NEW_FILE, mode, dir_fd=pfd))
            return old
        if kind == "link":
            assert target is not None       # a link is made with its target
            try:
                kernel.symlink(target, name, dir_fd=pfd)
                return None
            except FileExistsError:
                pass
            try:
                old = os.readlink(name, dir_fd=pfd)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                raise ContainerPathError(f"{path}: exists in the rootfs and is not a link") from None
            if old == target:
                return None
            replace_link(kernel, pfd, name, target)
            return old
        raise ValueError(kind)
    finally:
        if dirs is None:
            kernel.close(pfd)


_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def replace_link(kernel: Kernel, dirfd: int, name: str, target: str) -> None:
    """`name` in `dirfd` made a link to `target` atomically: a link under a random
    temporary name renamed over it (what a killed writer left is removed first)."""
    remove_stale(dirfd, name, kernel)
    tmp = temp_name(name)
    kernel.symlink(target, tmp, dir_fd=dirfd)
    try:
        kernel.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        try:
            kernel.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise


def mkdirs_in_root(kernel: Kernel, rootfd: int, path: str, mode: int = 0o755, _depth: int = 0) -> int:
    """`mkdir -p` inside the root; returns an O_PATH|O_DIRECTORY fd of the last directory.
    A symlink on the way is followed inside the root (and its target created if missing),
    as `mkdir -p` in the container would."""
    if _depth > MAXSYMLINKS:
        raise ContainerPathError(f"{path}: too many levels of symbolic links in the rootfs")
    fd = kernel.dup(rootfd)
    try:
        for name in [p for p in path.split("/") if p and p != "."]:
            if name == "..":
                raise ContainerPathError(f"{path}: '..' in a container path")
            try:
                kernel.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = _open_dir_in(kernel, rootfd, fd, name, path, _depth)
            kernel.close(fd)
            fd = nfd
        return fd
    except BaseException:
        kernel.close(fd)
        raise


def _open_dir_in(kernel: Kernel, rootfd: int, dirfd: int, name: str, whole: str, depth: int = 0) -> int:
    """Open `name` under `dirfd` as a directory; if it is a symlink, resolve it inside the
    root (not against the host), which is what the container would see."""
    try:
        return kernel.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise ContainerPathError(f"{whole}: {name} is not a directory in the rootfs")
    # Where the link leads, relative to the root: the path of dirfd inside the root + link.
    root = os.readlink(f"/proc/self/fd/{rootfd}").rstrip("/")
    here = os.readlink(f"/proc/self/fd/{dirfd}")
    rel = here[len(root):] if here.startswith(root) else "/"
    target = os.readlink(name, dir_fd=dirfd)
    dest = target if target.startswith("/") else rel.rstrip("/") + "/" + target
    try:
        return open_in_root(kernel, rootfd, dest, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        return mkdirs_in_root(kernel, rootfd, resolve_in_root(root, dest), _depth=depth + 1)




def undo_at(kernel: Kernel, rootfd: int, path: str, action: Callable[[int, str], object]) -> None:
    """action(parent fd, name) for the container `path`, its parent opened inside the
    root; an OSError (it is gone, or not a directory now) is ignored: the undo steps of
    a failed injection do what they still can."""
    parent, _, name = path.rpartition("/")
    try:
        pfd = open_in_root(kernel, rootfd, parent or "/", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return
    try:
        action(pfd, name)
    except OSError:
        pass
    finally:
        kernel.close(pfd)


def write_new(kernel: Kernel, dirfd: int, name: str, data: bytes, mode: int, replace: bool = False) -> None:
    """Create `name` in the directory `dirfd` holding `data`, never through a link and
    never waiting on a FIFO there; an existing entry is an error unless `replace` (then
    it is replaced atomically, core.files.replace_in_dir)."""
    if replace:
        replace_in_dir(dirfd, name, data, mode, kernel)
        return
    fd = kernel.open(name, _NEW_FILE, mode, dir_fd=dirfd)
    try:
        kernel.write_all(fd, data)
    finally:
        kernel.close(fd)
