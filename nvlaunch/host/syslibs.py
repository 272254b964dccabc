"""The host system libraries the driver needs (libm, libpthread, ...), found through the
driver root's ld cache: bound only into a container that lacks them (plan IF_ABSENT)."""
from __future__ import annotations

import os

from nvlaunch.host import elf, ldcache
from nvlaunch.host.driver_files import ANY, ARCHES, LD_SO_CACHE, DriverFile
from nvlaunch.host.inroot import Resolver
from nvlaunch.host.view import HostView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


# The dynamic loader is named by the program interpreter, never through a library
# directory: a copy in the container's library directory would do nothing.
_LOADER_PREFIXES = ("ld-linux", "ld64.so", "ld-musl")


MAX_SYSTEM_LIBS = 64


def system_libs(host: HostView, files: Sequence[DriverFile], driver_files: Iterable[DriverFile] = (),
                machine: str | None = None) -> list[DriverFile]:
    """The host libraries outside the driver that its native libraries and binaries in
    `files` need (DT_NEEDED, followed transitively): libm.so.6, libpthread.so.0, ... for
    libcuda and nvidia-smi.  Each is found through the driver root's ld cache (first
    native entry, resolved inside the root) and comes back as kind "syslib" named by its
    soname.  Names any driver library provides (`files` and `driver_files`: those belong
    to a capability, not here), the dynamic loader and names the cache does not know are
    left out.  A container normally has these; the plan binds them only where it does
    not (plan.IF_ABSENT).  Runs only when a plan is built (plans are cached)."""
    arch = ARCHES.get(machine or os.uname().machine, ARCHES["x86_64"])
    libs = [f for f in (*files, *driver_files) if f.kind in ("lib", "lib32")]
    provided = {f.soname for f in libs if f.soname} | {f.name for f in libs}
    wanted: list[str] = []
    for f in files:
        if f.kind in ("lib", "bin"):
            wanted.extend(_needed(f.host_path))
    if not wanted:
        return []
    res = Resolver(host.driver_root, host.reads)
    cache = res.resolve(LD_SO_CACHE)
    try:
        entries = ldcache.load(res.host(cache)) if cache else []
    except ldcache.LdCacheError:
        entries = []
    where: dict[str, str] = {}
    for e in entries:
        if e.flags & ldcache.ARCH_MASK == arch[0] and e.flags & ldcache.FLAG_ELF:
            where.setdefault(e.key, e.value)
    out: list[DriverFile] = []
    seen = set(provided)
    while wanted and len(out) < MAX_SYSTEM_LIBS:
        name = wanted.pop(0)
        if name in seen or name.startswith(_LOADER_PREFIXES):
            continue
        seen.add(name)
        resolved = res.resolve(where[name]) if name in where else None
        if resolved is None:
            continue
        host_path = res.host(resolved)
        out.append(DriverFile("syslib", ANY, host_path, name, name, ()))
        wanted.extend(_needed(host_path))
    return out


def _needed(path: str) -> tuple[str, ...]:
    try:
        info = elf.read_elf_info(path)
    except ValueError:
        return ()
    return info.needed if info else ()
