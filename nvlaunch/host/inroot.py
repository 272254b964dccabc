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
