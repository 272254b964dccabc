"""The container's ld.so.cache, updated without running any of the container's binaries.

The container's own cache (read inside its root) is parsed, the injected libraries are
put first (so they win over a stub of the same soname), and a new cache is written with
nvlaunch's own writer (ldcache.build).  No ldconfig, neither the host's nor the
container's, ever runs (NVIDIA's CVE-2024-0135/-0136/CVE-2025-23267 came from exactly that).
"""
from __future__ import annotations

import os

from nvlaunch.host import ldcache
from nvlaunch.host.container import container_cache
from nvlaunch.host.inroot import resolve_in_root

LIB = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_X8664_LIB64
LIB32 = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_I386


def merged_entries(existing: list, pairs) -> list:
    """Our (soname, container path, is_32bit) pairs first, then the container's entries."""
    ours = [ldcache.CacheEntry(key=soname, value=path, flags=LIB32 if is32 else LIB)
            for soname, path, is32 in pairs]
    taken = {(e.key, e.value) for e in ours}
    return ours + [e for e in existing if (e.key, e.value) not in taken]


def merged_cache(root: str, pairs) -> bytes:
    """A new cache for the rootfs at host path `root` (its current cache kept; without
    one, ours alone still works)."""
    return ldcache.build(merged_entries(container_cache(root), pairs))


def write_in_root(kernel, rootfd: int, pairs) -> None:
    """Replace /etc/ld.so.cache inside the root at `rootfd` atomically (hooks)."""
    from nvlaunch.exec.inroot import mkdirs_in_root, open_in_root
    existing = []
    try:
        fd = open_in_root(kernel, rootfd, ldcache.LD_SO_CACHE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            existing = ldcache.parse(f.read())
    except (OSError, ldcache.LdCacheError):
        pass
    data = ldcache.build(merged_entries(existing, pairs))
    etc = mkdirs_in_root(kernel, rootfd, "/etc")
    try:
        tmp = f".ld.so.cache.nvlaunch-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=etc)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, "ld.so.cache", src_dir_fd=etc, dst_dir_fd=etc)
    finally:
        os.close(etc)
