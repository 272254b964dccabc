"""Which of the host's GPUs a container gets: a --gpus / NVIDIA_VISIBLE_DEVICES value
parsed against the GPUs host.gpus found.

`select_gpus(spec, gpus, host)` takes, per the contract: all, none, void/empty, or a comma
list of indices, GPU UUIDs or unique UUID prefixes, PCI bus ids and MIG devices (G:M,
MIG-<uuid>).  Items are matched in libnvidia-container's order (src/cli/common.c
select_gpu_device): full GPU UUID, PCI bus id, index, MIG UUID, G:M; nvlaunch adds
unique UUID prefixes (nvidia-docker 1.0's NV_GPU).  MIG UUIDs are known only through
NVML (host.gpus.nvml_mig_uuids), asked only when a MIG form needs it.

Inside a scheduler's allocation (host.allocation: a Slurm step, a device cgroup that lets
only some GPUs through) `all` means the allocation's GPUs and indices count within it, in
PCI order; a GPU of the host outside it is an error that names it.  allocated_spec()
does that for a front end: it turns the request into the selected GPUs' UUIDs before a
Request is made, so the plan (and the plan cache's key) holds host GPUs only.
"""
from __future__ import annotations

import os

from nvlaunch.core.errors import SelectionError, quote
from nvlaunch.core.records import record
from nvlaunch.host.gpus import (CAPS_DIR, Gpu, MigDevice, enumerate_migs, format_bus_id, mig_minors,
                                nvml_mig_uuids, parse_bus_id)
from nvlaunch.host.view import HostView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence


MODE_VOID = "void"        # nothing injected: not a GPU container


MODE_NONE = "none"        # driver files and control nodes, no GPU nodes


MODE_DEVICES = "devices"  # the selected GPUs (maybe zero of them with "all" on a host without)


@record
class Selection:
    """What a GPU request selects.  `gpus` includes the parents of selected MIG devices."""
    gpus: tuple[Gpu, ...] = ()
    migs: tuple[MigDevice, ...] = ()
    mode: str = MODE_VOID

    @property
    def visible_devices(self) -> str:
        """NVIDIA_VISIBLE_DEVICES for inside the container: the selection by UUID
        (MIG devices by MIG UUID where known), or "void"/"none"."""
        if self.mode != MODE_DEVICES:
            return self.mode
        mig_parents = {m.gpu.uuid for m in self.migs}
        names = [g.uuid for g in self.gpus if g.uuid not in mig_parents]
        for m in self.migs:
            names.append(m.uuid or f"MIG-{m.gpu.uuid}/{m.gi}/{m.ci}")
        return ",".join(names)


# MIG-GPU-<gpu uuid>/<gi>/<ci>: the pre-R470 MIG UUID form, which names its parent.
_MIG_OLD = r"^MIG-(GPU-[0-9a-fA-F-]+)/([0-9]{1,9})/([0-9]{1,9})$"

# More than any host has: an index beyond it is unknown, and int() never sees a number
# too long for it (it refuses more than 4300 digits).
_INDEX_MAX = 1 << 20


def _is_index(item: str) -> bool:
    """ASCII digits only: str.isdigit() alone takes "١" and "²" too."""
    return item.isascii() and item.isdigit()


def _index(item: str) -> int:
    """An _is_index() item as a number, capped at _INDEX_MAX (no GPU has that index)."""
    digits = item.lstrip("0") or "0"
    return _INDEX_MAX if len(digits) > len(str(_INDEX_MAX)) else min(int(digits), _INDEX_MAX)


def _shown(n: int) -> str:
    return f"{n}" if n < _INDEX_MAX else f"{_INDEX_MAX} or more"


def _mig_index(item: str) -> tuple[str, str] | None:
    """"G:M" (MIG device M of GPU G) -> ("G", "M")."""
    g, colon, m = item.partition(":")
    return (g, m) if colon and _is_index(g) and _is_index(m) else None


_SYNTAX = ("want all, none, void, or a comma list of GPU indices, GPU UUIDs or unique "
           "UUID prefixes, PCI bus ids, and MIG devices (G:M or MIG-<uuid>)")


class _MigContext:
    """MIG lookups for one select_gpus call: procfs first, NVML once if needed."""

    def __init__(self, host: HostView | None, gpus: Sequence[Gpu]):
        self.host, self.gpus = host, gpus
        self._minors: dict[str, int] | None = None
        self._migs: dict[int, tuple[MigDevice, ...]] = {}
        self._nvml: dict[tuple[str, int, int], str] | None = None
        self.nvml_error: Exception | None = None

    def need_host(self, item: str) -> None:
        if self.host is None:
            raise SelectionError(f"MIG device {quote(item)}: the host's /proc is needed to find it")

    def migs(self, gpu: Gpu) -> tuple[MigDevice, ...]:
        if gpu.index not in self._migs:
            assert self.host is not None        # callers checked need_host() first
            if self._minors is None:
                self._minors = mig_minors(self.host)
            self._migs[gpu.index] = enumerate_migs(self.host, gpu, self._minors)
        return self._migs[gpu.index]

    def nvml(self) -> dict[tuple[str, int, int], str] | None:
        """MIG UUIDs from NVML, or None (the error kept) where NVML cannot be used."""
        if self._nvml is None and self.nvml_error is None:
            try:
                self._nvml = nvml_mig_uuids(self.gpus)
            except Exception as err:     # ImportError, NVMLError (no driver), OSError
                self.nvml_error = err
        return self._nvml

    def with_uuid(self, mig: MigDevice) -> MigDevice:
        table = self.nvml()
        uuid = table.get((mig.gpu.uuid.lower(), mig.gi, mig.ci)) if table else None
        return mig if uuid is None else MigDevice(mig.gpu, mig.gi, mig.ci, uuid, mig.cap_minors)


def _all(gpus: Sequence[Gpu], host: HostView | None) -> Selection:
    """Every GPU, and (as libnvidia-container's select_all_devices) every MIG device."""
    migs: list[MigDevice] = []
    if host is not None:
        minors = None
        for g in gpus:
            if os.path.isdir(host.proc(f"{CAPS_DIR}/gpu{g.minor}/mig", "node")):
                if minors is None:
                    minors = mig_minors(host)
                migs.extend(enumerate_migs(host, g, minors))
    return Selection(tuple(gpus), tuple(migs), MODE_DEVICES)


@record
class _Scope:
    """An allocation's view: `outside` are the host's GPUs it does not hold."""
    outside: tuple[Gpu, ...]
    source: str

    def check(self, item: str, found: Gpu | None) -> None:
        if found is not None:
            raise SelectionError(
                f"GPU {quote(item)} ({found.uuid}, {found.bus_id}) is outside this allocation "
                f"({self.source})", hint="select the GPUs of the allocation: all, or indices "
                "counted within it")


def _by_uuid(item: str, gpus: Sequence[Gpu], scope: _Scope | None = None) -> Gpu:
    """A full GPU UUID (case-insensitive) or a unique prefix of one."""
    low = item.lower()
    if scope is not None and not any(g.uuid.lower().startswith(low) for g in gpus):
        matches = [g for g in scope.outside if g.uuid.lower().startswith(low)]
        if len(matches) == 1 and len(item) > len("GPU-"):
            scope.check(item, matches[0])
    for g in gpus:
        if g.uuid.lower() == low:
            return g
    matches = [g for g in gpus if g.uuid.lower().startswith(low)]
    if len(matches) == 1 and len(item) > len("GPU-"):
        return matches[0]
    if len(matches) > 1:
        raise SelectionError(f"ambiguous GPU UUID prefix {quote(item)}: matches "
                             + ", ".join(g.uuid for g in matches),
                             hint="give more of the UUID")
    raise SelectionError(f"unknown GPU {quote(item)}: no GPU has this UUID",
                         hint="see `nvidia-smi -L` or `nvlaunch info`")


def _by_mig_uuid(item: str, gpus: Sequence[Gpu], ctx: _MigContext) -> MigDevice:
    ctx.need_host(item)
    import re   # MIG forms only: keep `re` off the plain path
    m = re.match(_MIG_OLD, item, re.I)
    if m:
        parent = next((g for g in gpus if g.uuid.lower() == m.group(1).lower()), None)
        if parent is None:
            raise SelectionError(f"unknown MIG device {quote(item)}: no GPU {m.group(1)}")
        gi, ci = int(m.group(2)), int(m.group(3))
        mig = next((x for x in ctx.migs(parent) if (x.gi, x.ci) == (gi, ci)), None)
        if mig is None:
            raise SelectionError(f"unknown MIG device {quote(item)}: GPU {parent.index} has no "
                                 f"GPU instance {gi} / compute instance {ci}")
        return MigDevice(parent, gi, ci, item, mig.cap_minors)
    table = ctx.nvml()
    if table is None:
        raise SelectionError(f"cannot resolve MIG device {quote(item)}: NVML is unavailable "
                             f"({ctx.nvml_error})", hint="select it as G:M instead")
    for (parent_uuid, gi, ci), uuid in table.items():
        if uuid.lower() == item.lower():
            parent = next((g for g in gpus if g.uuid.lower() == parent_uuid), None)
            if parent is None:
                break
            mig = next((x for x in ctx.migs(parent) if (x.gi, x.ci) == (gi, ci)), None)
            caps = mig.cap_minors if mig else ()
            return MigDevice(parent, gi, ci, uuid, caps)
    raise SelectionError(f"unknown MIG device {quote(item)}: no MIG device has this UUID",
                         hint="see `nvidia-smi -L`")


def _by_mig_index(item: str, gpu_index: int, mig_index: int, gpus: Sequence[Gpu],
                  ctx: _MigContext) -> MigDevice:
    ctx.need_host(item)
    if gpu_index >= len(gpus):
        raise SelectionError(f"unknown MIG device {quote(item)}: no GPU with index {_shown(gpu_index)} "
                             f"({_count(gpus)})")
    migs = ctx.migs(gpus[gpu_index])
    if mig_index >= len(migs):
        have = f"it has {len(migs)}" if migs else "MIG is off or it has no MIG devices"
        raise SelectionError(f"unknown MIG device {quote(item)}: GPU {gpu_index} has no MIG device "
                             f"{_shown(mig_index)} ({have})")
    return ctx.with_uuid(migs[mig_index])


def _count(gpus: Sequence[Gpu], scope: _Scope | None = None) -> str:
    n = len(gpus)
    what = f"this allocation ({scope.source})" if scope is not None else "this host"
    return f"{what} has no GPUs" if n == 0 else \
        f"{what} has {n} GPU{'s' if n > 1 else ''}: 0" + (f"-{n - 1}" if n > 1 else "")


CDI_KIND = "nvidia.com/gpu="


def _cdi_name(item: str) -> str:
    """A CDI device name as NVIDIA's runtime takes it in NVIDIA_VISIBLE_DEVICES
    (`nvidia.com/gpu=all`, `nvidia.com/gpu=0`, `nvidia.com/gpu=GPU-...`): the device
    part, which names GPUs as a plain item does (nvlaunch's spec names its devices so)."""
    return item[len(CDI_KIND):] if item.startswith(CDI_KIND) else item


def select_gpus(spec: str | None, gpus: Iterable[Gpu], host: HostView | None = None,
                scope: _Scope | None = None) -> Selection:
    """Parse a --gpus / NVIDIA_VISIBLE_DEVICES value against `gpus` (enumerate_gpus order).

    SelectionError names the offending item: an unknown index, UUID or bus id, an
    ambiguous UUID prefix, a MIG device that does not exist, or bad syntax.  Duplicates
    are dropped and the request's order kept; a MIG device also selects its parent GPU.
    `host` is needed for MIG devices (and to list MIG devices for "all").  With `scope`
    (allocated_spec), `gpus` are an allocation's and a GPU of the host outside it is an
    error saying so.
    """
    gpus = tuple(gpus)
    items = [_cdi_name(s.strip()) for s in (spec or "").split(",")]
    items = [s for s in items if s]
    if not items or items == ["void"]:
        return Selection(mode=MODE_VOID)
    if items == ["none"]:
        return Selection(mode=MODE_NONE)
    if "all" in items:
        if len(set(items)) > 1:
            raise SelectionError(f"bad GPU list {quote(spec)}: 'all' cannot be combined with "
                                 "other devices")
        return _all(gpus, host)
    for word in ("none", "void"):
        if word in items:
            raise SelectionError(f"bad GPU list {quote(spec)}: {word!r} cannot be combined with "
                                 "other devices")
    ctx = _MigContext(host, gpus)
    chosen: list[Gpu] = []
    migs: list[MigDevice] = []
    for item in items:
        gpu: Gpu | None = None
        mig: MigDevice | None = None
        bus = parse_bus_id(item)
        if item[:4].upper() == "GPU-":
            gpu = _by_uuid(item, gpus, scope)
        elif bus is not None:
            gpu = next((g for g in gpus if parse_bus_id(g.bus_id) == bus), None)
            if gpu is None and scope is not None:
                scope.check(item, next((g for g in scope.outside if parse_bus_id(g.bus_id) == bus), None))
            if gpu is None:
                raise SelectionError(f"unknown GPU {quote(item)}: no GPU at PCI bus id "
                                     f"{format_bus_id(bus, nvml=True)}")
        elif _is_index(item):
            n = _index(item)
            if n >= len(gpus):
                raise SelectionError(f"unknown GPU {quote(item)}: no GPU with index "
                                     f"{_shown(n)} ({_count(gpus, scope)})")
            gpu = gpus[n]
        elif item[:4].upper() == "MIG-":
            mig = _by_mig_uuid(item, gpus, ctx)
        elif (index := _mig_index(item)) is not None:
            g, m = index
            mig = _by_mig_index(item, _index(g), _index(m), gpus, ctx)
        else:
            raise SelectionError(f"unknown device {quote(item)}", hint=_SYNTAX)
        if mig is not None:
            if not any((x.gpu.uuid, x.gi, x.ci) == (mig.gpu.uuid, mig.gi, mig.ci) for x in migs):
                migs.append(mig)
            gpu = mig.gpu
        assert gpu is not None      # every branch above found one or raised
        if gpu not in chosen:
            chosen.append(gpu)
    return Selection(tuple(chosen), tuple(migs), MODE_DEVICES)


def allocated_spec(spec: str | None, host: HostView, environ: Mapping[str, str] | None = None
                   ) -> str | None:
    """Inside an allocation (host.allocation) the GPUs `spec` (--gpus or
    NVIDIA_VISIBLE_DEVICES syntax) selects from it, in host terms: their UUIDs (MIG devices
    as MIG-<gpu uuid>/<gi>/<ci>), or "none" where the allocation holds none; None outside
    any allocation, and for void/none (no look at the host).
    `environ`: the caller's environment (default os.environ).  SelectionError names a GPU
    outside the allocation, an index beyond it, or a Slurm grant that cannot be mapped."""
    items = [s.strip() for s in (spec or "").split(",")]
    items = [s for s in items if s]
    if not items or items in (["void"], ["none"]):
        return None
    from nvlaunch.host.allocation import read_allocation
    from nvlaunch.host.gpus import enumerate_gpus
    gpus = enumerate_gpus(host)
    alloc = read_allocation(host, environ, gpus)
    if alloc is None:
        return None
    held = set(alloc.minors)
    inside = tuple(g for g in gpus if g.minor in held)
    scope = _Scope(tuple(g for g in gpus if g.minor not in held), alloc.source)
    sel = select_gpus(spec, inside, host, scope)
    parents = {m.gpu.uuid for m in sel.migs}
    names = [g.uuid for g in sel.gpus if g.uuid not in parents]
    names += [f"MIG-{m.gpu.uuid}/{m.gi}/{m.ci}" for m in sel.migs]
    return ",".join(names) or "none"


VISIBLE_VARS = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def renumbered_env(env: Iterable[tuple[str, str]], spec: str | None) -> list[tuple[str, str]]:
    """A container environment whose CUDA_VISIBLE_DEVICES / GPU_DEVICE_ORDINAL (inherited
    from a Slurm task, say, where they count the host's or the cgroup's GPUs) count the
    devices of `spec` (an allocated_spec() result) instead: 0..n-1, as the container
    sees them.  Variables that are absent stay absent."""
    items = [s for s in (x.strip() for x in (spec or "").split(",")) if s]
    n = 0 if items in ([], ["void"], ["none"]) else len(items)
    value = ",".join(str(i) for i in range(n))
    return [(k, value if k in VISIBLE_VARS else v) for k, v in env]
