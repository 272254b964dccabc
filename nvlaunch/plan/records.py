"""The injection plan: plain immutable data that every front end applies the same way.

`build_plan(request, host)` (pure: it reads the host, never changes anything) turns a
Request into a Plan: which device nodes, files and links a container gets, and the
environment it sees.  Container paths in the plan are absolute paths *inside* the
container; host paths are real paths on this machine (already under the host roots).
The front ends (launch.py for `run`, oci_hook.py, lxc_hook.py, cdi.py) decide how:
`run` creates mount points in a private tmpfs layer, the hooks inside the container's
rootfs, and the CDI spec turns the same records into containerEdits.
"""
from __future__ import annotations

from nvlaunch.core import consts as C
from nvlaunch.core.errors import DiscoveryError
from nvlaunch.core.records import record, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection

# How the executor treats a host source that is missing at apply time (Charliecloud's
# BD_REQUIRED / BD_OPTIONAL): driver files differ between driver versions.
REQUIRED = "required"
OPTIONAL = "optional"
# A host system library the driver needs (libm.so.6, ...): bound only into a container
# that has no library of that soname, so it never shadows the container's own.  Settled
# per rootfs by settle_absent() before a plan is applied.
IF_ABSENT = "if-absent"


@record
class BindFile:
    """Bind a host file (library, binary, firmware, config) onto a container path."""
    src: str
    dst: str
    readonly: bool = True
    policy: str = REQUIRED


@record
class BindDir:
    """Bind a host directory (or socket) onto a container path."""
    src: str
    dst: str
    readonly: bool = True
    recursive: bool = True
    policy: str = REQUIRED


@record
class BindDevice:
    """Bind a host device node; major/minor are what the cgroup rule allows."""
    src: str
    dst: str
    major: int
    minor: int


@record
class Symlink:
    """Create `link` (container path) pointing at `target` (relative or absolute)."""
    target: str
    link: str


@record
class WriteFile:
    """A file whose content nvlaunch makes (ld.so.cache, the /proc/driver/nvidia copies)."""
    dst: str
    data: bytes
    mode: int = 0o644


@record
class Tmpfs:
    """A fresh tmpfs (e.g. over /proc/driver/nvidia)."""
    dst: str
    options: str = "mode=0555"


if TYPE_CHECKING:
    Entry = BindFile | BindDir | BindDevice | Symlink | WriteFile | Tmpfs
    Bind = BindFile | BindDir | BindDevice


@record
class Plan:
    """What a container gets.  `entries` are applied in order; `devices` is what the cgroup
    rules must allow; `env` is added to the container's environment; `libdir` is where
    libraries went (the ld cache names it); `ldcache` lists (soname, container path)
    pairs the container's ld.so.cache must hold."""
    entries: tuple[Entry, ...] = ()
    devices: tuple[BindDevice, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    libdir: str | None = None
    ldcache: tuple[tuple[str, str, bool], ...] = ()   # (soname, container path, 32-bit)
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.entries and not self.env


def bind_flags(entry: Bind) -> int:
    """The mount flags of a bind record, the same in every executor: device nodes
    nosuid,noexec (and not nodev, or they could not be opened); files and directories
    nosuid,nodev, read-only unless asked otherwise, directories recursively."""
    if isinstance(entry, BindDevice):
        return C.MS_NOSUID | C.MS_NOEXEC
    flags = C.MS_NOSUID | C.MS_NODEV | (C.MS_RDONLY if entry.readonly else 0)
    if isinstance(entry, BindDir) and entry.recursive:
        flags |= C.MS_REC
    return flags


def bind_wanted(entry: Bind, source_exists: bool) -> bool:
    """The bind policy, in one place for every executor: whether a bind whose host source
    does (not) exist is made.  A missing OPTIONAL source is skipped, a missing REQUIRED
    one is an error; IF_ABSENT must have been settled for the rootfs (settle_absent)."""
    policy = getattr(entry, "policy", REQUIRED)
    if policy == IF_ABSENT:
        raise ValueError(f"{entry.dst}: an if-absent bind not settled for this rootfs")
    if source_exists:
        return True
    if policy == OPTIONAL:
        return False
    raise DiscoveryError(f"{entry.src}: driver file missing")


def settle_absent(plan: Plan, present: Callable[[list[str]], Collection[str]]) -> Plan:
    """`plan` for one rootfs: each IF_ABSENT library whose soname `present(names)` reports
    in the container is dropped (with its ld cache line), the others become REQUIRED."""
    absent = [e for e in plan.entries if isinstance(e, (BindFile, BindDir)) and e.policy == IF_ABSENT]
    if not absent:
        return plan
    there = present([e.dst.rpartition("/")[2] for e in absent])
    entries: list[Entry] = []
    dropped: set[str] = set()
    for e in plan.entries:
        if isinstance(e, (BindFile, BindDir)) and e.policy == IF_ABSENT:
            if e.dst.rpartition("/")[2] in there:
                dropped.add(e.dst)
                continue
            e = replace(e, policy=REQUIRED)
        entries.append(e)
    return replace(plan, entries=tuple(entries),
                         ldcache=tuple(p for p in plan.ldcache if p[1] not in dropped))


def without_proc(plan: Plan) -> Plan:
    """The plan less its /proc/driver/nvidia view (for a rootfs whose /proc is mounted
    only after the hook ran, so that a view made now would be hidden)."""
    keep = tuple(e for e in plan.entries
                 if not (e.link if isinstance(e, Symlink) else e.dst).startswith("/proc/"))
    return replace(plan, entries=keep)
