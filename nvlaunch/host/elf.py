"""A tiny ELF reader: class, machine, DT_SONAME and DT_NEEDED of a shared library.

Used where the ld cache cannot tell us a library's soname (the no-cache fallback of
driver.py) and to tell 32-bit from 64-bit files.  It reads only what it needs with
seeks: the file header, the program headers (or, for a file without them, the section
headers), the dynamic table and one string -- a few KB at most, whatever the file size.

Layouts are from the System V gABI and <elf.h>.  Pure stdlib; no exceptions escape but
ValueError (a malformed ELF file) -- a file that is not ELF, or cannot be opened, gives
None.
"""
from __future__ import annotations

import struct

from nvlaunch.core.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2

EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183

PT_LOAD = 1
PT_DYNAMIC = 2
SHT_DYNAMIC = 6
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_SONAME = 14

# Caps on what one call reads, so a hostile or corrupt file costs little.
MAX_PHNUM = 256          # real libraries have ~10 program headers
MAX_SHNUM = 4096
MAX_ENTSIZE = 256        # e_phentsize/e_shentsize: 32..64 in real files
MAX_DYN_ENTRIES = 1024   # libcuda has ~40 dynamic entries
MAX_SONAME = 4096

# Per class: (ehdr tail after e_ident, phdr, shdr, dyn) struct formats without the
# byte-order character.
#   Elf32_Ehdr: e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize
#               e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
#   Elf32_Phdr: p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
#   Elf64_Phdr: p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
#   ElfN_Shdr:  sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info
#               sh_addralign sh_entsize
#   ElfN_Dyn:   d_tag d_val
_LAYOUT = {
    ELFCLASS32: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "iI"),
    ELFCLASS64: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "qQ"),
}


@record
class ElfInfo:
    elf_class: int          # 32 or 64
    machine: int            # e_machine: EM_X86_64, EM_386, EM_AARCH64, ...
    soname: str | None      # DT_SONAME, None if the file has none
    needed: tuple[str, ...] = ()  # DT_NEEDED names, in order


@record
class _Seg:
    vaddr: int
    offset: int
    filesz: int


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    if offset < 0 or size < 0:
        raise ValueError("negative offset or size")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"truncated: wanted {size} bytes at offset {offset}")
    return data


def _cstring(f: BinaryIO, offset: int) -> str:
    f.seek(offset)
    data = f.read(MAX_SONAME)
    end = data.find(b"\0")
    if end < 0:
        raise ValueError(f"unterminated string at offset {offset}")
    return data[:end].decode("utf-8", "surrogateescape")


def _dynamic_names(f: BinaryIO, bo: str, dyn_fmt: str, dyn_off: int, dyn_size: int,
                   vaddr_to_off: Callable[[int], int] | None, strtab_off: int | None = None
                   ) -> tuple[str | None, tuple[str, ...]]:
    """Walk the dynamic table at dyn_off; return (soname or None, needed names)."""
    dyn = struct.Struct(bo + dyn_fmt)
    count = min(dyn_size // dyn.size, MAX_DYN_ENTRIES)
    if count <= 0:
        return None, ()
    raw = _read_at(f, dyn_off, count * dyn.size)
    soname_idx = strtab_vaddr = None
    needed_idx = []
    for tag, val in dyn.iter_unpack(raw):
        if tag == DT_NULL:
            break
        if tag == DT_SONAME:
            soname_idx = val
        elif tag == DT_NEEDED:
            needed_idx.append(val)
        elif tag == DT_STRTAB:
            strtab_vaddr = val
    if soname_idx is None and not needed_idx:
        return None, ()
    if strtab_off is None:
        if strtab_vaddr is None:
            raise ValueError("DT_SONAME or DT_NEEDED without DT_STRTAB")
        assert vaddr_to_off is not None     # callers give one or the other
        strtab_off = vaddr_to_off(strtab_vaddr)
    soname = None if soname_idx is None else _cstring(f, strtab_off + soname_idx)
    return soname, tuple(_cstring(f, strtab_off + i) for i in needed_idx)


def _parse(f: BinaryIO) -> ElfInfo | None:
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != ELFMAG:
        return None
    cls, data = ident[4], ident[5]
    if cls not in _LAYOUT or data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise ValueError(f"unknown ELF class {cls} or byte order {data}")
    bo = "<" if data == ELFDATA2LSB else ">"
    ehdr_fmt, phdr_fmt, shdr_fmt, dyn_fmt = _LAYOUT[cls]
    ehdr = struct.Struct(bo + ehdr_fmt)
    (_type, machine, _ver, _entry, phoff, shoff, _flags, _ehsize,
     phentsize, phnum, shentsize, shnum, _shstrndx) = ehdr.unpack(_read_at(f, 16, ehdr.size))
    info_class = 32 if cls == ELFCLASS32 else 64

    phdr = struct.Struct(bo + phdr_fmt)
    if phoff and phnum:
        if not phdr.size <= phentsize <= MAX_ENTSIZE or phnum > MAX_PHNUM:
            raise ValueError(f"bad program header table (phentsize {phentsize}, phnum {phnum})")
        raw = _read_at(f, phoff, phentsize * phnum)
        loads, dynamic = [], None
        for i in range(phnum):
            fields = phdr.unpack_from(raw, i * phentsize)
            if cls == ELFCLASS32:
                p_type, p_offset, p_vaddr, _pa, p_filesz = fields[:5]
            else:
                p_type, _pf, p_offset, p_vaddr, _pa, p_filesz = fields[:6]
            if p_type == PT_LOAD:
                loads.append(_Seg(p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return ElfInfo(info_class, machine, None)

        def vaddr_to_off(vaddr: int) -> int:
            # DT_STRTAB is a virtual address; the PT_LOAD segment holding it maps it
            # back to a file offset.
            for seg in loads:
                if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                    return vaddr - seg.vaddr + seg.offset
            raise ValueError(f"DT_STRTAB address {vaddr:#x} is in no PT_LOAD segment")

        return ElfInfo(info_class, machine,
                       *_dynamic_names(f, bo, dyn_fmt, dynamic[0], dynamic[1], vaddr_to_off))

    # No program headers (unusual for a shared object): the SHT_DYNAMIC section and its
    # sh_link string table give the same answer.
    shdr = struct.Struct(bo + shdr_fmt)
    if not shoff or not shnum:
        return ElfInfo(info_class, machine, None)
    if not shdr.size <= shentsize <= MAX_ENTSIZE or shnum > MAX_SHNUM:
        raise ValueError(f"bad section header table (shentsize {shentsize}, shnum {shnum})")
    raw = _read_at(f, shoff, shentsize * shnum)
    sections = [shdr.unpack_from(raw, i * shentsize) for i in range(shnum)]
    for sec in sections:
        if sec[1] == SHT_DYNAMIC:
            link = sec[6]
            if link >= shnum:
                raise ValueError(f"SHT_DYNAMIC sh_link {link} out of range")
            return ElfInfo(info_class, machine, *_dynamic_names(
                f, bo, dyn_fmt, sec[4], sec[5], None, strtab_off=sections[link][4]))
    return ElfInfo(info_class, machine, None)


def read_elf_info(path: str) -> ElfInfo | None:
    """Class, machine, soname and needed libraries of the ELF file at `path`.

    None if the file cannot be opened or is not ELF; ValueError if it is ELF but
    malformed (truncated tables, addresses outside the file, ...).
    """
    try:
        f = open(path, "rb", buffering=0)
    except OSError:
        return None
    with f:
        try:
            return _parse(f)
        except (struct.error, OverflowError, OSError) as err:
            raise ValueError(f"{path}: malformed ELF file: {err}") from err
        except ValueError as err:
            raise ValueError(f"{path}: malformed ELF file: {err}") from err
