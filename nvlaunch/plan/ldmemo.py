"""The container's merged ld.so.cache, remembered between starts.

Each GPU start gives the container a new ld.so.cache: the plan's libraries first, then
the container's own entries (host.container.merged_entries), written with nvlaunch's own
writer.  For an image with thousands of entries (CUDA, PyTorch) parsing and rebuilding
costs tens of milliseconds in Python, every start, for the same result.  So the result
is kept in the private cache directory (plan.cachedir) under a key of

    (FORMAT, BLAKE2b of the container's cache bytes, their length, the plan's pairs)

The container's cache is read each time (bounded, never blocking: host.inroot
read_regular), so the key is its content: the same image in a new container (a new
overlay mount, a new inode) hits, and a hostile rootfs can only ever be given what its
own bytes give (BLAKE2b, 128 bits: no collision can be crafted).  No file
there is a key too.  A miss computes and stores; any doubt (no cache directory, a file
that is not ours) computes.  NVLAUNCH_NO_CACHE=1 turns it off.  MAX_FILES are kept.
"""
from __future__ import annotations

import _blake2
import marshal
import os
import stat
import zlib

from nvlaunch.core.files import replace_in_dir
from nvlaunch.host import ldcache
from nvlaunch.host.container import merged_entries
from nvlaunch.host.inroot import read_regular, walk_open
from nvlaunch.plan.cachedir import ENV_NO_CACHE, cache_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    LdPairs = Iterable[tuple[str, str, bool]]
    Key = tuple[Any, ...]

FORMAT = 2
MAX_FILES = 16
PREFIX = "ldcache-"


def merged(cache_fd: int | None, pairs: LdPairs, proc: str = "/proc",
           directory: str | None = "") -> bytes:
    """The merged cache for the container cache at the O_PATH fd `cache_fd` (None: the
    container has none) and the plan's `pairs`.  `proc`: where procfs is (for
    read_regular); `directory`: where the memo files are ("": plan.cachedir.cache_dir();
    `run`'s PID 1 passes the one its caller found, as PID 1 sees it; None: no memo).
    Everything it needs is imported with the module: a hook's injector calls it inside
    the container's mount namespace."""
    ours = tuple((str(s), str(p), bool(b)) for s, p, b in pairs)
    raw = b"" if cache_fd is None else read_regular(cache_fd, ldcache.LD_SO_CACHE, proc=proc)
    if directory == "":
        directory = _directory()
    key: Key = (FORMAT, "merged", _digest(raw), len(raw), ours)
    name = _name(key)
    if directory is not None:
        hit = _load(directory, name, key)
        if hit is not None:
            return hit
    existing: list[ldcache.CacheEntry] = []
    if raw:
        try:
            existing = ldcache.parse(raw, ldcache.LD_SO_CACHE)
        except ldcache.LdCacheError:
            pass
    data = ldcache.build(merged_entries(existing, ours))
    if directory is not None:
        _store(directory, name, key, data, proc)
    return data


def listed(root: str, names: Iterable[str]) -> list[tuple[str, str]] | None:
    """The (soname, path) lines of the ld.so.cache of the rootfs at host path `root` for
    `names` (host.container.libraries_present's question), remembered by content as
    merged() does; None where no memo can be used (the caller reads it itself)."""
    directory = _directory()
    if directory is None:
        return None
    try:
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = walk_open(rootfd, ldcache.LD_SO_CACHE, os.O_PATH)
    except OSError:
        return []                        # no cache there: nothing listed
    finally:
        os.close(rootfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None                  # the caller's read says what is wrong
        raw = read_regular(fd, ldcache.LD_SO_CACHE)
    finally:
        os.close(fd)
    wanted = tuple(sorted(set(names)))
    key: Key = (FORMAT, "listed", _digest(raw), len(raw), wanted)
    name = _name(key)
    hit = _load(directory, name, key)
    if hit is not None:
        return list(marshal.loads(hit))
    try:
        entries = ldcache.parse(raw, ldcache.LD_SO_CACHE)
    except ldcache.LdCacheError:
        entries = []
    want = set(wanted)
    found = [(e.key, e.value) for e in entries if e.key in want]
    _store(directory, name, key, marshal.dumps(found), "/proc")
    return found


def _digest(raw: bytes) -> bytes:
    return _blake2.blake2b(raw, digest_size=16).digest()


def _name(key: Key) -> str:
    return f"{PREFIX}{zlib.crc32(repr(key).encode()):08x}"


def _directory() -> str | None:
    if os.environ.get(ENV_NO_CACHE) == "1":
        return None
    return cache_dir(create=False)


def _load(directory: str, name: str, key: Key) -> bytes | None:
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 64 << 20:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            stored_key, data = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)
    return data if stored_key == key and isinstance(data, bytes) else None


def _store(directory: str, name: str, key: Key, data: bytes, proc: str) -> None:
    try:
        dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        replace_in_dir(dirfd, name, marshal.dumps((key, data)), 0o600, proc=proc)
        _prune(dirfd)
    except (OSError, ValueError):
        pass          # no memo: the next start computes again, no more
    finally:
        os.close(dirfd)


def _prune(dirfd: int) -> None:
    lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        names = [n for n in os.listdir(lfd) if n.startswith(PREFIX)]
    finally:
        os.close(lfd)
    if len(names) <= MAX_FILES:
        return
    aged = sorted((os.stat(n, dir_fd=dirfd, follow_symlinks=False).st_mtime_ns, n) for n in names)
    for _, n in aged[:len(aged) - MAX_FILES]:
        try:
            os.unlink(n, dir_fd=dirfd)
        except OSError:
            pass
