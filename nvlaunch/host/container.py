"""What a container rootfs holds, read inside it: its library directory, its ld.so.cache
(and the merged one it gets: ours first, then its own), which system libraries it has.

A rootfs is hostile: every path is resolved inside it (host.inroot) and nothing here
follows a link out of it.  Reads only; the writers are in exec/.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core.errors import ContainerPathError
from nvlaunch.host.inroot import read_in_root, resolve_in_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nvlaunch.host import ldcache

    LdPairs = Iterable[tuple[str, str, bool]]   # (soname, container path, 32-bit)

# Where a container keeps its libraries: Debian/Ubuntu multiarch, else the lib64 layout
# (libnvidia-container decides on /etc/debian_version the same way).
MULTIARCH_LIBDIR = "/usr/lib/x86_64-linux-gnu"


LIB64_LIBDIR = "/usr/lib64"


def container_libdir(root: str) -> str:
    """The library directory of the rootfs at host path `root` (resolved inside it)."""
    for probe in ("/etc/debian_version", MULTIARCH_LIBDIR, "/lib/x86_64-linux-gnu"):
        if os.path.lexists(root.rstrip("/") + resolve_in_root(root, probe)):
            return MULTIARCH_LIBDIR
    return LIB64_LIBDIR


# The dynamic loader's own search order when a name is not in its cache (ld.so(8)):
# Debian's multiarch directories first, then the lib64 and plain defaults.
DEFAULT_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
                    "/usr/lib64", "/lib", "/usr/lib")


def libraries_present(root: str, names: Iterable[str],
                      listed: Iterable[tuple[str, str]] | None = None) -> set[str]:
    """Which of the library `names` the rootfs at host path `root` has: a non-empty file
    (links followed inside the root) that its /etc/ld.so.cache names, or in a default
    library directory.  Empty files do not count: they are the mount points a hook left
    in a persistent rootfs on an earlier start (and the cache lines it wrote for them).
    `listed`: the (soname, path) pairs of its cache for these names, when the caller
    knows them (plan.ldmemo remembers them per cache file)."""
    names = set(names)
    found: set[str] = set()
    if listed is None:
        listed = [(e.key, e.value) for e in container_cache(root) if e.key in names]
    for key, value in listed:
        if key in names and key not in found and _real_file(root, value):
            found.add(key)
    for name in names - found:
        if any(_real_file(root, f"{d}/{name}") for d in DEFAULT_LIB_DIRS):
            found.add(name)
    return found


def _real_file(root: str, path: str) -> bool:
    try:
        st = os.stat(root.rstrip("/") + resolve_in_root(root, path))
    except (OSError, ContainerPathError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def container_cache(root: str, proc: str = "/proc") -> list[ldcache.CacheEntry]:
    """The entries of the ld.so.cache of the rootfs at host path `root` (read inside it,
    host.inroot.read_in_root); [] for none, or one that cannot be parsed.  Anything but a
    regular file of sane size there is a ContainerPathError: never waited on, never
    read whole.  `proc`: where procfs is (PID 1 of `run` sees the host's elsewhere)."""
    from nvlaunch.host import ldcache   # only for a plan with if-absent libraries
    data = read_in_root(root, ldcache.LD_SO_CACHE, proc=proc)
    if data is None:
        return []
    try:
        return ldcache.parse(data, ldcache.LD_SO_CACHE)
    except ldcache.LdCacheError:
        return []


def proc_mounted(root: str) -> bool:
    """Whether the rootfs at host path `root` has a procfs at /proc already (its
    /proc/self is the kernel's magic link), as with lxc.mount.auto = proc:..."""
    try:
        where = resolve_in_root(root, "/proc")
    except ContainerPathError:
        return False
    return os.path.islink(root.rstrip("/") + where + "/self")


def merged_entries(existing: list[ldcache.CacheEntry], pairs: LdPairs) -> list[ldcache.CacheEntry]:
    """Our (soname, container path, is_32bit) pairs first, then the container's entries."""
    from nvlaunch.host import ldcache
    lib = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_X8664_LIB64
    lib32 = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_I386
    ours = [ldcache.CacheEntry(key=soname, value=path, flags=lib32 if is32 else lib)
            for soname, path, is32 in pairs]
    taken = {(e.key, e.value) for e in ours}
    return ours + [e for e in existing if (e.key, e.value) not in taken]


def passwd_entry(root: str, uid: int) -> tuple[str, str] | None:
    """(name, home) of `uid` in the rootfs's /etc/passwd (read inside it, bounded), or
    None: no such line, or no file nvlaunch will read there."""
    try:
        data = read_in_root(root, "/etc/passwd", limit=4 << 20)
    except ContainerPathError:
        return None
    if not data:
        return None
    want = str(uid)
    for line in data.decode("utf-8", "replace").split("\n"):
        fields = line.split(":")
        if len(fields) >= 7 and fields[2] == want and fields[0]:
            return fields[0], fields[5]
    return None
