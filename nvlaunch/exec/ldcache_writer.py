"""The container's ld.so.cache, updated without running any of the container's binaries.

The container's own cache (read inside its root) is parsed, the injected libraries are
put first (so they win over a stub of the same soname), and a new cache is written with
nvlaunch's own writer (ldcache.build).  No ldconfig, neither the host's nor the
container's, ever runs (NVIDIA's CVE-2024-0135/-0136/CVE-2025-23267 came from exactly that).
"""
from __future__ import annotations

import os

from nvlaunch.core.errors import ContainerPathError
from nvlaunch.exec.inroot import make_in_root, mkdirs_in_root, open_in_root, write_new
from nvlaunch.host import ldcache
from nvlaunch.host.container import merged_entries
from nvlaunch.kernel.real import REAL

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
    """Replace /etc/ld.so.cache inside the root at `rootfd` atomically (hooks)."""
    existing: list[ldcache.CacheEntry] = []
    try:
        fd = open_in_root(kernel, rootfd, ldcache.LD_SO_CACHE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:      # a read: the cache is parsed, never trusted
            existing = ldcache.parse(f.read())
    except (OSError, ldcache.LdCacheError):
        pass
    data = ldcache.build(merged_entries(existing, pairs))
    etc = mkdirs_in_root(kernel, rootfd, "/etc")
    try:
        tmp = f".ld.so.cache.nvlaunch-{os.getpid()}"
        write_new(kernel, etc, tmp, data, 0o644)
        kernel.rename(tmp, "ld.so.cache", src_dir_fd=etc, dst_dir_fd=etc)
    finally:
        kernel.close(etc)


def update_rootfs(rootfs: str, links: Iterable[tuple[str, str]], libs: LdPairs,
                  folders: Iterable[str] = (), kernel: Kernel | None = None) -> None:
    """Make `links` ((target, link) pairs), the ld.so.conf.d entry for `folders` and the
    ld cache entries `libs` ((soname, path, is32) triples) inside `rootfs`."""
    kernel = kernel or REAL
    if os.path.realpath(rootfs) == "/":
        # NVIDIA's update-ldcache refuses "/" too: that would be the host's cache
        raise ContainerPathError("ldcache: the container rootfs resolves to /; refusing to touch the host")
    rootfd = kernel.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for target, link in links:
            make_in_root(kernel, rootfd, link, "link", target=target)
        extra = [d for d in dict.fromkeys(folders) if d not in SYSTEM_LIBDIRS]
        if extra:
            # So that an ldconfig run later inside the container keeps the libraries.
            dfd = mkdirs_in_root(kernel, rootfd, LD_SO_CONF_D)
            try:
                tmp = f".{CONF_NAME}.{os.getpid()}"
                text = "# made by nvlaunch (CDI hook): the NVIDIA driver libraries\n" \
                    + "".join(d + "\n" for d in extra)
                write_new(kernel, dfd, tmp, text.encode(), 0o644, replace=True)
                kernel.rename(tmp, CONF_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                kernel.close(dfd)
        if libs:
            write_in_root(kernel, rootfd, list(libs))
    finally:
        kernel.close(rootfd)
