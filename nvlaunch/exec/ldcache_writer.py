"""The container's ld.so.cache, updated without running any of the container's binaries.

The container's own cache (read inside its root) is parsed, the injected libraries are
put first (so they win over a stub of the same soname), and a new cache is written with
nvlaunch's own writer (ldcache.build).  No ldconfig, neither the host's nor the
container's, ever runs (NVIDIA's CVE-2024-0135/-0136/CVE-2025-23267 came from exactly that).
"""
from __future__ import annotations

import os

from nvlaunch.core.errors import ContainerPathError
from nvlaunch.core.log import checkpoint
from nvlaunch.exec.inroot import (make_in_root, mkdirs_in_root, open_in_root, replace_link, undo_at,
                                  write_new)
from nvlaunch.host import ldcache
from nvlaunch.kernel.real import REAL
from nvlaunch.plan.ldmemo import merged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nvlaunch.kernel.protocol import Kernel

    LdPairs = Iterable[tuple[str, str, bool]]   # (soname, container path, 32-bit)

# The directories ld.so searches without being told (glibc's system dirs on x86-64 and
# the multiarch ones Debian configures); a folder among them needs no ld.so.conf.d file.
SYSTEM_LIBDIRS = frozenset({"/lib", "/usr/lib", "/lib64", "/usr/lib64",
                            "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"})
LD_SO_CONF_D = "/etc/ld.so.conf.d"
CONF_NAME = "00-nvlaunch.conf"

def write_in_root(kernel: Kernel, rootfd: int, pairs: LdPairs) -> None:
    """Replace /etc/ld.so.cache inside the root at `rootfd` atomically (hooks).  The
    container's own cache is read as a regular file of bounded size or not at all
    (host.inroot.read_regular), parsed, never trusted."""
    data = cache_bytes(kernel, rootfd, pairs)
    etc = mkdirs_in_root(kernel, rootfd, "/etc")
    try:
        write_new(kernel, etc, "ld.so.cache", data, 0o644, replace=True)
    finally:
        kernel.close(etc)


def cache_bytes(kernel: Kernel, rootfd: int, pairs: LdPairs, proc: str = "/proc",
                memo: str | None = "") -> bytes:
    """The new cache: the container's own (read as write_in_root says) with `pairs` first,
    remembered between starts (plan.ldmemo: a 5,000-entry cache costs tens of ms).
    `proc` and `memo`: plan.ldmemo.merged's `proc` and `directory` (`run`'s PID 1)."""
    try:
        fd: int | None = open_in_root(kernel, rootfd, ldcache.LD_SO_CACHE, os.O_PATH)
    except OSError:
        fd = None
    try:
        return merged(fd, pairs, proc, memo)
    finally:
        if fd is not None:
            kernel.close(fd)


def update_rootfs(rootfs: str, links: Iterable[tuple[str, str]], libs: LdPairs,
                  folders: Iterable[str] = (), kernel: Kernel | None = None) -> None:
    """Make `links` ((target, link) pairs), the ld.so.conf.d entry for `folders` and the
    ld cache entries `libs` ((soname, path, is32) triples) inside `rootfs`."""
    kernel = kernel or REAL
    if os.path.realpath(rootfs) == "/":
        # NVIDIA's update-ldcache refuses "/" too: that would be the host's cache
        raise ContainerPathError("ldcache: the container rootfs resolves to /; refusing to touch the host")
    rootfd = kernel.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    made: list[tuple[str, str | None]] = []     # (link, the target it had, None: new)
    dirs: list[str] = []                         # directories made, outermost first
    try:
        for target, link in links:
            dirs.extend(_missing_dirs(kernel, rootfd, link.rpartition("/")[0]))
            existed = _lexists_in_root(kernel, rootfd, link)
            old = make_in_root(kernel, rootfd, link, "link", target=target)
            if old is not None or not existed:
                made.append((link, old))
        checkpoint("ldcache-links")
        extra = [d for d in dict.fromkeys(folders) if d not in SYSTEM_LIBDIRS]
        if extra:
            # So that an ldconfig run later inside the container keeps the libraries.
            dirs.extend(_missing_dirs(kernel, rootfd, LD_SO_CONF_D))
            dfd = mkdirs_in_root(kernel, rootfd, LD_SO_CONF_D)
            try:
                text = "# made by nvlaunch (CDI hook): the NVIDIA driver libraries\n" \
                    + "".join(d + "\n" for d in extra)
                write_new(kernel, dfd, CONF_NAME, text.encode(), 0o644, replace=True)
            finally:
                kernel.close(dfd)
        if libs:
            write_in_root(kernel, rootfd, list(libs))
    except BaseException:
        _restore_links(kernel, rootfd, made)
        _remove_dirs(kernel, rootfd, dirs)
        raise
    finally:
        kernel.close(rootfd)


def _missing_dirs(kernel: Kernel, rootfd: int, path: str) -> list[str]:
    """The directories of `path` (a container path) that do not exist yet, outermost
    first: what mkdirs_in_root is about to make (where links lead elsewhere, only what
    is missing by name; an undo that misses one leaves an empty directory, no more)."""
    missing: list[str] = []
    while path and path != "/":
        try:
            kernel.close(open_in_root(kernel, rootfd, path, os.O_PATH))
            break
        except OSError:
            missing.insert(0, path)
            path = path.rpartition("/")[0]
    return missing


def _remove_dirs(kernel: Kernel, rootfd: int, dirs: list[str]) -> None:
    """rmdir what _missing_dirs found, innermost first (a directory that is not empty
    any more, something else's now, stays)."""
    for path in sorted(set(dirs), key=len, reverse=True):
        undo_at(kernel, rootfd, path, lambda pfd, name: kernel.rmdir(name, dir_fd=pfd))


def _lexists_in_root(kernel: Kernel, rootfd: int, path: str) -> bool:
    try:
        kernel.close(open_in_root(kernel, rootfd, path, os.O_PATH | os.O_NOFOLLOW))
        return True
    except OSError:
        return False


def _restore_links(kernel: Kernel, rootfd: int, made: list[tuple[str, str | None]]) -> None:
    """Undo update_rootfs's links, newest first: a new one removed, a replaced one put
    back to its old target."""
    for link, old in reversed(made):
        def put_back(pfd: int, name: str, old: str | None = old) -> None:
            if old is None:
                kernel.unlink(name, dir_fd=pfd)
            else:
                replace_link(kernel, pfd, name, old)
        undo_at(kernel, rootfd, link, put_back)
