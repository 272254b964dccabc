"""The one in-root path resolver: a path followed inside a root directory as chroot(2)
would, never outside it.

Used for the host's driver root (a library named by the ld cache, its symlink chain
resolved inside the root, libnvidia-container's path_resolve) and for container rootfs
trees, which are hostile: an absolute link target starts again at the root, `..` never
climbs above it, and at most MAXSYMLINKS links are followed (the kernel's limit).

    res = Resolver(root)
    res.resolve("/usr/lib/libcuda.so.1")   -> "/usr/lib/libcuda.so.580.159.04" or None
    res.canonical("/usr/lib/new/dir")      -> where it would land; missing parts kept
    res.host(resolved)                     -> root + resolved

Each resolved component is memoized, so the shared directory prefixes of a plan cost one
lstat each.  `reads`, when given (HostView.reads), gets every component looked at, so
that a cached plan can be checked against exactly what was read (plan.cache).

The executors never mount or create through these names (a link could change between
the check and the use); they open paths with openat2 RESOLVE_IN_ROOT (exec.inroot) and
use this only to compute where a path lands.
"""
from __future__ import annotations

import errno
import os
import stat

from nvlaunch.core.errors import ContainerPathError

MAXSYMLINKS = 40     # as the kernel's path walk (MAXSYMLINKS in include/linux/namei.h)

class Resolver:
    """Resolves absolute paths inside `root` (a host directory)."""

    def __init__(self, root: str, reads: dict[str, str] | None = None):
        self.prefix = "" if root == "/" else root.rstrip("/")
        # in-root component -> (kind, resolved in-root path, parts still to create):
        # kind "dir", "file" (anything but a directory), "missing", or "dangling" (a
        # link whose target does not exist: resolved + rest is where it points).
        self.memo: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.reads = reads

    def host(self, resolved: str) -> str:
        """The host path of a resolved in-root path."""
        if not self.prefix:
            return resolved
        return self.prefix if resolved == "/" else self.prefix + resolved

    def listdir(self, resolved: str) -> list[str]:
        """The names in the resolved in-root directory (OSError as os.listdir)."""
        path = self.host(resolved)
        if self.reads is not None:
            self.reads[path] = "names"
        return os.listdir(path)

    def resolve(self, path: str) -> str | None:
        """The in-root path `path` leads to, or None if a component is missing, is not a
        directory, or links loop."""
        try:
            cur, rest = self._walk(path, [0])
        except ContainerPathError:
            return None
        return None if rest else cur

    def canonical(self, path: str) -> str:
        """The in-root path `path` reaches, following the root's symlinks as a process
        inside it would; components from the first missing one on are kept literally
        (what mkdir -p would create).  ContainerPathError for a link loop or a
        non-directory in the middle of the path."""
        cur, rest = self._walk(path, [0])
        tail: list[str] = []
        for part in rest:
            if part == "..":
                if tail:
                    tail.pop()
            elif part and part != ".":
                tail.append(part)
        return (cur.rstrip("/") + "/" + "/".join(tail)) if tail else cur

    def _walk(self, path: str, hops: list[int]) -> tuple[str, list[str]]:
        """(resolved prefix, the parts left from the first missing component on)."""
        parts = path.split("/")
        cur = ""
        for i, comp in enumerate(parts):
            if comp == "" or comp == ".":
                continue
            if comp == "..":
                # cur holds no symlinks, so a lexical ".." is the real parent; at the root
                # it stays there.
                cur = cur[:cur.rfind("/")] if cur else ""
                continue
            nxt = cur + "/" + comp
            kind, resolved, rest = self.memo.get(nxt) or self._component(nxt, hops)
            if kind == "missing":
                return cur or "/", parts[i:]
            if kind == "dangling":
                return resolved, list(rest) + parts[i + 1:]
            if kind == "file" and any(p not in ("", ".") for p in parts[i + 1:]):
                raise ContainerPathError(f"{path}: {nxt} is not a directory")
            cur = resolved
        return cur or "/", []

    def _component(self, nxt: str, hops: list[int]) -> tuple[str, str, tuple[str, ...]]:
        if self.reads is not None:
            self.reads.setdefault(self.host(nxt), "node")
        try:
            st = os.lstat(self.prefix + nxt)
        except (OSError, ValueError):       # ENOENT, ENOTDIR, EACCES, a NUL byte
            entry: tuple[str, str, tuple[str, ...]] = ("missing", nxt, ())
        else:
            if not stat.S_ISLNK(st.st_mode):
                entry = ("dir" if stat.S_ISDIR(st.st_mode) else "file", nxt, ())
            else:
                hops[0] += 1
                if hops[0] > MAXSYMLINKS:
                    raise ContainerPathError(f"{nxt}: too many levels of symbolic links")
                target = os.readlink(self.prefix + nxt)
                parent = nxt[:nxt.rfind("/")]
                cur, rest = self._walk(target if target.startswith("/") else parent + "/" + target,
                                       hops)
                if rest:
                    entry = ("dangling", cur, tuple(rest))
                else:
                    kind = "dir" if cur == "/" else self.memo.get(cur, ("dir",))[0]
                    entry = (kind, cur, ())
        self.memo[nxt] = entry
        return entry


def resolve_in_root(root: str, path: str) -> str:
    """The canonical in-root path `path` reaches inside the directory `root` (see
    Resolver.canonical)."""
    return Resolver(root).canonical(path)


# ---- fds: a walk the rootfs cannot race, and bounded reads of its files -----------------

def walk_open(rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """An fd for `path` inside the directory at `rootfd`, resolved as openat2(2) with
    RESOLVE_IN_ROOT would: one component at a time, each opened O_PATH|O_NOFOLLOW under
    the fd of its parent, a symlink read with readlinkat(2) and its target walked again
    (an absolute one from the root), `..` never above the root.  No name is looked up
    twice, so nothing swapped in the rootfs meanwhile can lead the walk out of it (the
    fallback for kernels or seccomp profiles without openat2).  The last component is
    opened with `flags` | O_NOFOLLOW: a link put there after the check fails (ELOOP)."""
    link_itself = flags & os.O_NOFOLLOW
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    stack = [os.dup(rootfd)]             # the directories from the root down
    parts = [p for p in reversed(path.split("/")) if p and p != "."]
    hops = 0
    try:
        while parts:
            comp = parts.pop()
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) and not (last and link_itself):
                os.close(fd)
                hops += 1
                if hops > MAXSYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(comp, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extend(p for p in reversed(target.split("/")) if p and p != ".")
                continue
            if last:
                os.close(fd)
                return os.open(comp, flags, dir_fd=stack[-1])
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            stack.append(fd)
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


# The most nvlaunch reads of one rootfs file (an ld.so.cache is some 100 KiB).
READ_LIMIT = 16 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_regular(pathfd: int, shown: str, limit: int = READ_LIMIT, proc: str = "/proc") -> bytes:
    """The bytes of the file an O_PATH fd names (the caller keeps the fd), checked first
    to be a regular file of at most `limit` bytes: a rootfs may put a FIFO, a device or a
    huge sparse file where nvlaunch reads.  Only then is it opened for reading, through
    `proc`/self/fd (no name is looked up again, so nothing swapped in meanwhile is
    opened: no device driver's open(2) ever runs on nvlaunch's behalf)."""
    st = os.fstat(pathfd)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise ContainerPathError(f"{shown}: {kind} in the rootfs, not a regular file")
    if st.st_size > limit:
        raise ContainerPathError(f"{shown}: {st.st_size} bytes in the rootfs, more than the "
                                 f"{limit >> 20} MiB nvlaunch reads")
    how = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(f"{proc}/self/fd/{pathfd}", how)
    except FileNotFoundError:
        if proc == "/proc":
            raise
        fd = os.open(f"/proc/self/fd/{pathfd}", how)    # a test tree's layout: the real one
    try:
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ContainerPathError(f"{shown}: grew past {limit >> 20} MiB while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_in_root(root: str, path: str, limit: int = READ_LIMIT, proc: str = "/proc") -> bytes | None:
    """The bytes of `path` inside the rootfs at host path `root` (walk_open, read_regular),
    None if it does not exist.  ContainerPathError if it is not a regular file or too big."""
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = walk_open(rootfd, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise ContainerPathError(f"{path}: {err.strerror} in the rootfs") from None
    finally:
        os.close(rootfd)
    try:
        return read_regular(fd, path, limit, proc)
    finally:
        os.close(fd)
