"""Paths inside a container rootfs, which is hostile: every lookup stays inside it.

Two ways in, both refusing to leave the root whatever symlinks the rootfs holds:
- `open_in_root(rootfd, path)`: openat2(2) with RESOLVE_IN_ROOT (Linux 5.6+), so `..` and
  absolute symlinks resolve against the rootfs, the way the container will see them;
- `resolve_in_root(root, path)`: the same walk done component by component in Python,
  for kernels without openat2 and for computing where a path *would* land.
Mount targets are opened O_PATH through these and mounted on `/proc/self/fd/N`, so what
gets mounted on is the inode that was checked (runc's `WithProcfd`, crun's `safe_openat`).
"""
from __future__ import annotations

import errno
import os
import stat

from nvlaunch.core.consts import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
from nvlaunch.core.errors import ContainerPathError
from nvlaunch.host.inroot import MAXSYMLINKS, resolve_in_root


TYPE_CHECKING = False
if TYPE_CHECKING:
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
    root = os.readlink(f"/proc/self/fd/{rootfd}")
    canon = resolve_in_root(root, path)
    fd = kernel.open(canon.lstrip("/") or ".", flags | os.O_NOFOLLOW, dir_fd=rootfd)
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        kernel.close(fd)
        raise ContainerPathError(f"{path}: resolves outside the container rootfs")
    return fd


def make_in_root(kernel: Kernel, rootfd: int, path: str, kind: str, mode: int = 0o755,
                 target: str | None = None, dirs: dict[str, int] | None = None) -> None:
    """Create `path` inside the root: kind "dir", "file" (an empty mount point) or "link"
    (-> target).  Parents are created as needed, each one opened inside the root, so a
    symlink in the rootfs can never make us create something on the host.  An existing
    entry of the right kind is left alone; a link is replaced only if it differs.
    `dirs` (parent path -> O_PATH fd, owned by the caller) keeps the parent directories
    opened by earlier calls: most entries of a plan share a few directories."""
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
        elif kind == "file":
            try:
                kernel.close(kernel.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                         | os.O_CLOEXEC, mode, dir_fd=pfd))
            except FileExistsError:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    # A link or a directory where a file mount point goes: replace the link
                    # (never follow it); a directory is an error.
                    if stat.S_ISDIR(st.st_mode):
                        raise ContainerPathError(f"{path}: exists in the rootfs as a directory") from None
                    kernel.unlink(name, dir_fd=pfd)
                    kernel.close(kernel.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, mode, dir_fd=pfd))
        elif kind == "link":
            assert target is not None       # a link is made with its target
            try:
                kernel.symlink(target, name, dir_fd=pfd)
            except FileExistsError:
                try:
                    if os.readlink(name, dir_fd=pfd) == target:
                        return
                except OSError:
                    pass
                # Atomic replace: a temporary link renamed over the old entry.
                tmp = f".{name}.nvlaunch-{os.getpid()}"
                kernel.symlink(target, tmp, dir_fd=pfd)
                kernel.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        else:
            raise ValueError(kind)
    finally:
        if dirs is None:
            kernel.close(pfd)


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




def write_new(kernel: Kernel, dirfd: int, name: str, data: bytes, mode: int, replace: bool = False) -> None:
    """Create `name` in the directory `dirfd` (never following a link there) holding
    `data`; an existing file is an error unless `replace` (then it is truncated)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if replace else os.O_EXCL
    fd = kernel.open(name, flags, mode, dir_fd=dirfd)
    try:
        kernel.write_all(fd, data)
    finally:
        kernel.close(fd)
