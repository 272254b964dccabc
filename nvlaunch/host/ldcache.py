"""Reading and writing glibc's /etc/ld.so.cache, over raw bytes, stdlib only.

This module owns the on-disk format of the dynamic loader's cache: it turns a cache
file into a list of CacheEntry (soname -> path, with ldconfig's flags) and writes a
list of entries back into a file that glibc's loader and `ldconfig -p` read.  It does
not scan directories or read ELF headers; callers decide what goes into a cache.

Three layouts exist (glibc elf/cache.c, sysdeps/generic/dl-cache.h):

* new (glibc >= 2.32 default): header "glibc-ld.so.cache1.1" (48 bytes), then nlibs
  entries {int32 flags, uint32 key, uint32 value, uint32 osversion, uint64 hwcap},
  then the strings; string offsets count from the start of that header.
* old (libc5 era): "ld.so-1.7.0", uint32 nlibs at offset 12, entries {int32 flags,
  uint32 key, uint32 value}; offsets count from the end of the entry table.
* compat: an old file whose string area starts, 8-byte aligned, with a complete new
  section; readers prefer that new section.

The loader finds a soname by binary search over the entries with _dl_cache_libcmp,
so the table must be in the order ldconfig writes: descending libcmp order of the
keys.  build() sorts that way; libcmp() is a faithful port of the C function.

New-format files of either byte order are read (the header says which); old-format
ones are little-endian only.  Every malformed input raises LdCacheError naming the
file; nothing else escapes.
"""
from __future__ import annotations

import _operator as operator   # the C modules: `operator` and `struct` cost an import each
import _struct as struct
import os
import sys
from itertools import compress, repeat

from nvlaunch.core.errors import DiscoveryError
from nvlaunch.core.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "ARCH_MASK", "ARCH_NAMES", "CacheEntry", "FLAG_AARCH64_LIB64", "FLAG_ARM_LIBHF",
    "FLAG_ARM_LIBSF", "FLAG_ELF", "FLAG_ELF_LIBC5", "FLAG_ELF_LIBC6", "FLAG_I386",
    "FLAG_IA64_LIB64", "FLAG_LIBC4", "FLAG_MIPS64_LIBN32", "FLAG_MIPS64_LIBN64",
    "FLAG_POWERPC_LIB64", "FLAG_RISCV_FLOAT_ABI_DOUBLE", "FLAG_RISCV_FLOAT_ABI_SOFT",
    "FLAG_S390_LIB64", "FLAG_SPARC_LIB64", "FLAG_TYPE_MASK", "FLAG_X8664_LIB64",
    "FLAG_X8664_LIBX32", "HWCAP_EXTENSION", "LD_SO_CACHE", "LdCacheError", "build",
    "by_key", "flag_string", "libcmp", "load", "lookup", "parse", "sort_key",
]

LD_SO_CACHE = "/etc/ld.so.cache"

# Flag bits, as in glibc sysdeps/generic/ldconfig.h.  The low byte is the library
# type, the high byte the ABI ("arch") the library was built for.
FLAG_TYPE_MASK = 0x00FF
FLAG_LIBC4 = 0x0000
FLAG_ELF = 0x0001
FLAG_ELF_LIBC5 = 0x0002
FLAG_ELF_LIBC6 = 0x0003
ARCH_MASK = 0xFF00
FLAG_I386 = 0x0000            # no arch bits: the plain 32-bit ABI (i386 on x86)
FLAG_SPARC_LIB64 = 0x0100
FLAG_IA64_LIB64 = 0x0200
FLAG_X8664_LIB64 = 0x0300
FLAG_S390_LIB64 = 0x0400
FLAG_POWERPC_LIB64 = 0x0500
FLAG_MIPS64_LIBN32 = 0x0600
FLAG_MIPS64_LIBN64 = 0x0700
FLAG_X8664_LIBX32 = 0x0800
FLAG_ARM_LIBHF = 0x0900
FLAG_AARCH64_LIB64 = 0x0A00
FLAG_ARM_LIBSF = 0x0B00
FLAG_MIPS_LIB32_NAN2008 = 0x0C00
FLAG_MIPS64_LIBN32_NAN2008 = 0x0D00
FLAG_MIPS64_LIBN64_NAN2008 = 0x0E00
FLAG_RISCV_FLOAT_ABI_SOFT = 0x0F00
FLAG_RISCV_FLOAT_ABI_DOUBLE = 0x1000
FLAG_LARCH_FLOAT_ABI_SOFT = 0x1100
FLAG_LARCH_FLOAT_ABI_DOUBLE = 0x1200

# Arch bits -> the word `ldconfig -p` prints after the type, e.g. "(libc6,x86-64)".
# Several ABIs share a word ("64bit"), exactly as glibc 2.36's ldconfig prints them;
# it prints LoongArch's as numbers (",4352"; names came in 2.37), and so do we.
ARCH_NAMES = {
    FLAG_SPARC_LIB64: "64bit",
    FLAG_IA64_LIB64: "IA-64",
    FLAG_X8664_LIB64: "x86-64",
    FLAG_S390_LIB64: "64bit",
    FLAG_POWERPC_LIB64: "64bit",
    FLAG_MIPS64_LIBN32: "N32",
    FLAG_MIPS64_LIBN64: "64bit",
    FLAG_X8664_LIBX32: "x32",
    FLAG_ARM_LIBHF: "hard-float",
    FLAG_AARCH64_LIB64: "AArch64",
    FLAG_ARM_LIBSF: "soft-float",
    FLAG_MIPS_LIB32_NAN2008: "nan2008",
    FLAG_MIPS64_LIBN32_NAN2008: "N32,nan2008",
    FLAG_MIPS64_LIBN64_NAN2008: "64bit,nan2008",
    FLAG_RISCV_FLOAT_ABI_SOFT: "soft-float",
    FLAG_RISCV_FLOAT_ABI_DOUBLE: "double-float",
}
TYPE_NAMES = {FLAG_LIBC4: "libc4", FLAG_ELF: "ELF", FLAG_ELF_LIBC5: "libc5",
              FLAG_ELF_LIBC6: "libc6"}

# hwcap bit 62 marks an entry from a glibc-hwcaps subdirectory (x86-64-v3, ...);
# the loader only takes such an entry when the CPU supports that ISA level.
HWCAP_EXTENSION = 1 << 62

MAGIC_OLD = b"ld.so-1.7.0"
MAGIC_NEW = b"glibc-ld.so.cache1.1"
_OLD_HEADER = 16              # magic[11] + pad + uint32 nlibs
_NEW_HEADER = 48              # see _HEADER_NEW
_ALIGN = 8                    # __alignof__ (struct cache_file_new) on 64-bit hosts
_ENDIAN_FORMAT = {0: "<", 2: "<", 3: ">"}   # header flags & 3: unset, little, big
_FLAGS_ENDIAN_LITTLE = 2
_NATIVE = "<" if sys.byteorder == "little" else ">"

# magic+version, nlibs, len_strings, flags, pad[3], extension_offset, unused[3]
_HEADER_NEW = struct.Struct("<20sIIB3xI12x")
_ENTRY_NEW = struct.Struct("<iIIIQ")
_ENTRY_OLD = struct.Struct("<iII")

# Bounds on what a damaged or hostile file can cost.  A key or value longer than
# PATH_MAX could never be opened; and as ldconfig stores each string once (a soname
# shares the tail of its path), a real file's strings add up to at most twice its
# size: far more means entries pointing into each other's bytes, a file that would
# otherwise cost (entries x string length) time and memory.
_MAX_STRING = 4096
_STRING_BUDGET = 8          # x the string area, plus _STRING_SLACK
_STRING_SLACK = 1 << 20


class LdCacheError(DiscoveryError):
    """An ld.so cache file is missing, unreadable, of unknown format or damaged."""


@record
class CacheEntry:
    """One cache line: `key` (a soname) resolves to the file `value`.

    Strings are decoded as UTF-8 with surrogateescape, so any byte string survives
    parse() -> build() unchanged.
    """
    key: str
    value: str
    flags: int
    osversion: int = 0
    hwcap: int = 0

    @property
    def arch(self) -> int:
        return self.flags & ARCH_MASK

    @property
    def is_elf(self) -> bool:
        """FLAG_ELF set, the test lookup() applies (libc5-era type 2 does not pass)."""
        return bool(self.flags & FLAG_ELF)


# ---------------------------------------------------------------- reading


def _damaged(path: str, what: str) -> LdCacheError:
    return LdCacheError(f"{path}: damaged ld cache: {what}",
                        hint="regenerate it with ldconfig")


def parse(data: bytes, path: str = "ld.so.cache") -> list[CacheEntry]:
    """The entries of a cache file's bytes, in file order; `path` names it in errors."""
    data = bytes(data)
    if not data:
        raise LdCacheError(f"{path}: empty ld cache", hint="regenerate it with ldconfig")
    if data.startswith(MAGIC_NEW):
        return _parse_new(data, 0, path)
    if data.startswith(MAGIC_OLD):
        return _parse_old(data, path)
    raise LdCacheError(f"{path}: not an ld.so cache (starts with {data[:20]!r})")


def _parse_new(data: bytes, base: int, path: str) -> list[CacheEntry]:
    if len(data) < base + _NEW_HEADER:
        raise _damaged(path, f"truncated header ({len(data) - base} of {_NEW_HEADER} bytes)")
    endian = _ENDIAN_FORMAT.get(data[base + 28] & 3)
    if endian is None:
        raise _damaged(path, f"invalid endianness flag {data[base + 28]:#x}")
    (nlibs,) = struct.unpack_from(endian + "I", data, base + 20)
    start = base + _NEW_HEADER
    if nlibs > (len(data) - start) // _ENTRY_NEW.size:
        raise _damaged(path, f"{nlibs} entries do not fit in {len(data)} bytes")
    table = memoryview(data)[start:start + nlibs * _ENTRY_NEW.size]
    columns: tuple[Sequence[int], ...]
    if endian == _NATIVE:
        # Columns read in place: an entry is 6 uint32 (flags, key, value, osversion,
        # hwcap lo/hi) = 3 uint64.  Free, where unpacking 1000 rows costs ~0.1 ms.
        words = table.cast("I")
        columns = (table.cast("i")[0::6], words[1::6], words[2::6], words[3::6],
                   table.cast("Q")[2::3])
    else:
        columns = tuple(zip(*struct.iter_unpack(endian + "iIIIQ", table)))
    return _entries(data, base, columns, nlibs, path)


def _parse_old(data: bytes, path: str) -> list[CacheEntry]:
    if len(data) < _OLD_HEADER:
        raise _damaged(path, f"truncated header ({len(data)} of {_OLD_HEADER} bytes)")
    (nlibs,) = struct.unpack_from("<I", data, 12)
    if nlibs > (len(data) - _OLD_HEADER) // _ENTRY_OLD.size:
        raise _damaged(path, f"{nlibs} entries do not fit in {len(data)} bytes")
    strings = _OLD_HEADER + nlibs * _ENTRY_OLD.size
    # A compat file hides a whole new-format section at the start of the old string
    # area: 8-aligned as ldconfig on 64-bit hosts writes it, or 4-aligned (32-bit).
    for base in (-(-strings // _ALIGN) * _ALIGN, strings):
        if data.startswith(MAGIC_NEW, base):
            return _parse_new(data, base, path)
    table = memoryview(data)[_OLD_HEADER:strings]
    flags, keys, values = zip(*_ENTRY_OLD.iter_unpack(table)) if nlibs else ((), (), ())
    return _entries(data, strings, (flags, keys, values, repeat(0), repeat(0)), nlibs, path)


def _entries(data: bytes, base: int, columns: tuple[Iterable[int], ...], nlibs: int,
             path: str) -> list[CacheEntry]:
    """Entries from columns (flags, key, value, osversion, hwcap) of an entry table.

    Offsets count from `base`.  For speed the whole area is decoded once as latin-1
    (one char per byte, so char offsets are byte offsets and decoding cannot fail)
    and every string is a str.find/slice on it; the rare non-ASCII string is then
    re-decoded as UTF-8.
    """
    if nlibs == 0:
        return []
    flags, koffs, voffs, osvers, hwcaps = columns
    text = data[base:].decode("latin-1")
    # Each search stops _MAX_STRING bytes on: the cost is bounded by the entry count.
    limit = repeat(_MAX_STRING + 1)
    kends = list(map(text.find, repeat("\0"), koffs, map(operator.add, koffs, limit)))
    vends = list(map(text.find, repeat("\0"), voffs, map(operator.add, voffs, limit)))
    if -1 in kends or -1 in vends:
        _raise_bad_string(path, text, koffs, kends, voffs, vends)
    total = sum(kends) - sum(koffs) + sum(vends) - sum(voffs)
    if total > _STRING_BUDGET * len(text) + _STRING_SLACK:
        raise _damaged(path, f"its {nlibs} entries' strings add up to {total} bytes, "
                             f"far more than its {len(text)} bytes of strings")
    keys = _utf8(list(map(text.__getitem__, map(slice, koffs, kends))))
    values = _utf8(list(map(text.__getitem__, map(slice, voffs, vends))))
    return _make_entries(keys, values, flags, osvers, hwcaps)


def _raise_bad_string(path: str, text: str, koffs: Iterable[int], kends: Iterable[int],
                      voffs: Iterable[int], vends: Iterable[int]) -> None:
    for i, (k, ke, v, ve) in enumerate(zip(koffs, kends, voffs, vends)):
        for what, off, end in (("key", k, ke), ("value", v, ve)):
            if end == -1:
                if off >= len(text):
                    raise _damaged(path, f"entry {i} {what} offset {off} out of range")
                if text.find("\0", off) == -1:
                    raise _damaged(path, f"entry {i} {what} at offset {off} is not NUL-terminated")
                raise _damaged(path, f"entry {i} {what} at offset {off} is longer than "
                                     f"{_MAX_STRING} bytes")
    raise _damaged(path, "a string is out of range")     # not reached: callers saw a -1


def _utf8(strings: list[str]) -> list[str]:
    """Re-decode, in place, the latin-1 strings that are not ASCII as UTF-8."""
    if not "".join(strings).isascii():
        for i in compress(range(len(strings)), map(operator.not_, map(str.isascii, strings))):
            strings[i] = strings[i].encode("latin-1").decode("utf-8", "surrogateescape")
    return strings


def _make_entries(keys: list[str], *columns: Iterable[object]) -> list[CacheEntry]:
    """CacheEntry records from field columns (in field order, keys first), built in C:
    tuple.__new__ over zipped columns, no per-object Python call."""
    # A record is a tuple subclass at run time, a plain class to mypy
    return list(map(tuple.__new__, repeat(CacheEntry, len(keys)),  # type: ignore[arg-type]
                    zip(keys, *columns)))


_load_cache: dict[str, tuple[tuple[int, int, int], list[CacheEntry]]] = {}


def load(path: str = LD_SO_CACHE) -> list[CacheEntry]:
    """parse() the file at `path`; an unchanged file is parsed once per process.

    "Unchanged" means same inode, size and mtime_ns, taken from the opened file so a
    cache replaced between stat and read (ldconfig renames a new one in) is never
    mixed up.  Each call returns a fresh list.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = _load_cache.get(path)
            if hit is not None and hit[0] == ident:
                return list(hit[1])
            data = f.read()
    except OSError as err:
        raise LdCacheError(f"{path}: cannot read ld cache: {err.strerror or err}", errno=err.errno) from err
    entries = parse(data, path)
    if len(_load_cache) >= 16:
        _load_cache.clear()
    _load_cache[path] = (ident, entries)
    return list(entries)


# ---------------------------------------------------------------- querying


def lookup(entries: Iterable[CacheEntry], soname: str, arch: int = FLAG_X8664_LIB64) -> CacheEntry | None:
    """The entry the loader would take for `soname` on `arch`: the first one in file
    order whose key matches, with FLAG_ELF set and those arch bits.

    glibc-hwcaps entries (HWCAP_EXTENSION) are skipped: the loader takes them only
    on CPUs with that ISA level, while the plain entry after them loads everywhere.
    """
    for e in entries:
        if (e.key == soname and e.flags & FLAG_ELF and e.flags & ARCH_MASK == arch
                and not e.hwcap & HWCAP_EXTENSION):
            return e
    return None


def by_key(entries: Iterable[CacheEntry], arch: int | None = None) -> dict[str, list[CacheEntry]]:
    """Entries grouped by key, keys and candidates in file order (first = preferred).

    With `arch`, only ELF entries for that arch are kept.
    """
    groups: dict[str, list[CacheEntry]] = {}
    for e in entries:
        if arch is None or (e.flags & FLAG_ELF and e.flags & ARCH_MASK == arch):
            groups.setdefault(e.key, []).append(e)
    return groups


def flag_string(flags: int, hwcap: int = 0) -> str:
    """What `ldconfig -p` (glibc 2.36) prints in parentheses, e.g. "libc6,x86-64"."""
    text = TYPE_NAMES.get(flags & FLAG_TYPE_MASK, "unknown")
    arch = flags & ARCH_MASK
    if arch:
        text += "," + ARCH_NAMES.get(arch, str(arch))
    if hwcap:
        text += f", hwcap: {hwcap:#018x}"
    return text


# ---------------------------------------------------------------- ordering


def _schar(c: int) -> int:
    return c - 256 if c >= 128 else c      # C `char` is signed on x86 and others


def _int32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def _as_bytes(s: str | bytes) -> bytes:
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)


def libcmp(a: str | bytes, b: str | bytes) -> int:
    """glibc's _dl_cache_libcmp: runs of digits compare as numbers, other bytes as
    signed chars, and a digit sorts after any non-digit (end of string included).

    Returns the C function's value (its sign is what matters), int overflow included.
    """
    p1, p2 = _as_bytes(a) + b"\0", _as_bytes(b) + b"\0"
    i = j = 0
    while p1[i]:
        c1, c2 = p1[i], p2[j]
        if 48 <= c1 <= 57:
            if not 48 <= c2 <= 57:
                return 1
            v1 = v2 = 0
            while 48 <= p1[i] <= 57:
                v1, i = _int32(v1 * 10 + p1[i] - 48), i + 1
            while 48 <= p2[j] <= 57:
                v2, j = _int32(v2 * 10 + p2[j] - 48), j + 1
            if v1 != v2:
                return _int32(v1 - v2)
        elif 48 <= c2 <= 57:
            return -1
        elif c1 != c2:
            return _schar(c1) - _schar(c2)
        else:
            i, j = i + 1, j + 1
    return _schar(p1[i]) - _schar(p2[j])


def _tokens(key: bytes) -> list[bytes]:
    """Digit runs and single other bytes, in order: b"lib10.so" -> [b"l", b"i", b"b", b"10", ...]."""
    out: list[bytes] = []
    i, n = 0, len(key)
    while i < n:
        j = i + 1
        if 48 <= key[i] <= 57:
            while j < n and 48 <= key[j] <= 57:
                j += 1
        out.append(key[i:j])
        i = j
    return out


def sort_key(key: str | bytes) -> tuple[int, ...]:
    """A sort key ordering strings as libcmp() does.

    Each digit run becomes (1, value) and each other byte (0, signed value), ending
    with (0, 0) for the NUL, flattened.  Equal only when libcmp says 0.  (libcmp is
    not transitive for digit runs whose int values differ by 2**31 or more; no
    order can follow it there, and this one compares the wrapped values.)
    """
    out: list[int] = []
    for tok in _tokens(_as_bytes(key)):
        if 48 <= tok[0] <= 57:
            out += (1, _int32(int(tok)))
        else:
            out += (0, _schar(tok[0]))
    out += (0, 0)
    return tuple(out)


def _ordered(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """ldconfig's order (elf/cache.c compare): keys in descending libcmp order, then
    flags descending, then glibc-hwcaps entries first; otherwise the caller's order,
    so the first of several equal entries stays the one the loader takes.  Exact
    (key, value, flags) repeats are dropped."""
    seen, unique = set(), []
    for e in entries:
        ident = (e.key, e.value, e.flags)
        if ident not in seen:
            seen.add(ident)
            unique.append(e)
    # Python's sort is stable also with reverse=True: equal items keep their order.
    return sorted(unique, reverse=True,
                  key=lambda e: (sort_key(e.key), e.flags, bool(e.hwcap & HWCAP_EXTENSION)))


# ---------------------------------------------------------------- writing


def build(entries: Iterable[CacheEntry]) -> bytes:
    """A new-format cache (glibc 2.36 layout, no extension section) of `entries`,
    sorted for the loader's binary search; see _ordered()."""
    return _pack(_ordered(entries))


def _pack(ordered: list[CacheEntry]) -> bytes:
    """Serialize entries in the given order (build() sorts first)."""
    strings_at = _NEW_HEADER + len(ordered) * _ENTRY_NEW.size
    strings = bytearray()
    offsets: dict[bytes, int] = {}

    def put(s: bytes) -> int:
        if s not in offsets:
            offsets[s] = strings_at + len(strings)
            strings.extend(s + b"\0")
        return offsets[s]

    table = bytearray()
    for i, e in enumerate(ordered):
        key, value = _as_bytes(e.key), _as_bytes(e.value)
        if b"\0" in key or b"\0" in value:
            raise ValueError(f"ld cache entry {i} ({e.key!r}): NUL byte in key or value")
        if len(key) > _MAX_STRING or len(value) > _MAX_STRING:
            raise ValueError(f"ld cache entry {i} ({e.key!r}): key or value longer than "
                             f"{_MAX_STRING} bytes")
        voff = put(value)
        # The soname is usually the tail of its path: share those bytes, as ldconfig does.
        koff = offsets.get(key) or (voff + len(value) - len(key) if value.endswith(key)
                                    else put(key))
        try:
            table += _ENTRY_NEW.pack(e.flags, koff, voff, e.osversion, e.hwcap)
        except struct.error as err:  # type: ignore[attr-defined]  # (missing from _struct.pyi)
            raise ValueError(f"ld cache entry {i} ({e.key!r}): {err}") from err
    header = _HEADER_NEW.pack(MAGIC_NEW, len(ordered), len(strings), _FLAGS_ENDIAN_LITTLE, 0)
    return bytes(header + table + strings)
