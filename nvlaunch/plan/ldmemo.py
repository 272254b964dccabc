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
import zlib

import nvlaunch.core.files  # noqa: F401 - cachedir.write's, loaded now (see merged())
from nvlaunch.core.errors import ContainerPathError
from nvlaunch.host import ldcache
from nvlaunch.host.container import merged_entries
from nvlaunch.host.inroot import read_in_root, read_regular
from nvlaunch.plan import cachedir
from nvlaunch.plan.cachedir import cache_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
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
        directory = cache_dir(create=False)

    def build() -> bytes:
        return ldcache.build(merged_entries(_entries(raw), ours))
    return _remembered(directory, (FORMAT, "merged", _digest(raw), len(raw), ours), build, proc)


def listed(root: str, names: Iterable[str]) -> list[tuple[str, str]] | None:
    """The (soname, path) lines of the ld.so.cache of the rootfs at host path `root` for
    `names` (host.container.libraries_present's question), remembered by content as
    merged() does; None where no memo can be used (the caller reads it itself, and says
    what is wrong with it)."""
    directory = cache_dir(create=False)
    if directory is None:
        return None
    try:
        raw = read_in_root(root, ldcache.LD_SO_CACHE)
    except (OSError, ContainerPathError):
        return None
    if raw is None:
        return []                        # no cache there: nothing listed
    wanted = tuple(sorted(set(names)))

    def found() -> bytes:
        want = set(wanted)
        return marshal.dumps([(e.key, e.value) for e in _entries(raw) if e.key in want])
    data = _remembered(directory, (FORMAT, "listed", _digest(raw), len(raw), wanted), found, "/proc")
    return list(marshal.loads(data))


def _remembered(directory: str | None, key: Key, compute: Callable[[], bytes], proc: str) -> bytes:
    """compute()'s bytes, from the memo file of `key` when one holds them, else computed
    and stored there (directory None: no memo)."""
    if directory is None:
        return compute()
    name = f"{PREFIX}{zlib.crc32(repr(key).encode()):08x}"
    raw = cachedir.read(directory, name)
    if raw is not None:
        try:
            stored_key, data = marshal.loads(raw)
            if stored_key == key and isinstance(data, bytes):
                return data
        except (EOFError, ValueError, TypeError):
            pass
    data = compute()
    cachedir.write(directory, name, marshal.dumps((key, data)), PREFIX, MAX_FILES, proc)
    return data


def _entries(raw: bytes) -> list[ldcache.CacheEntry]:
    """The container's cache entries; none for no cache or one that does not parse."""
    if not raw:
        return []
    try:
        return ldcache.parse(raw, ldcache.LD_SO_CACHE)
    except ldcache.LdCacheError:
        return []


_LAST: list[bytes] = [b"", b""]     # the last (bytes, digest) hashed by this process


def _digest(raw: bytes) -> bytes:
    """BLAKE2b of `raw`.  A launch reads the container's cache twice (listed() while the
    plan is settled, merged() when the cache is written: in `run`'s PID 1, a copy of this
    process, or in the same hook process), so the same bytes again are compared with the
    last ones hashed (a memcmp) rather than hashed again: 0.8 ms for a 5,000-entry cache
    here."""
    if raw == _LAST[0] and _LAST[1]:
        return _LAST[1]
    digest = _blake2.blake2b(raw, digest_size=16).digest()
    _LAST[:] = [raw, digest]
    return digest
