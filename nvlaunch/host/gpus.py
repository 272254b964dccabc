"""The host's GPUs and which of them a container gets.

`enumerate_gpus(host)` reads /proc/driver/nvidia/gpus/*/information under the proc root
and numbers the GPUs in PCI bus order, as NVML and nvidia-smi do (the /dev/nvidiaN minor
is *not* the index).  `select_gpus(spec, gpus, host)` parses a --gpus /
NVIDIA_VISIBLE_DEVICES value per the contract: all, none, void/empty, or a comma list of
indices, GPU UUIDs or unique UUID prefixes, PCI bus ids and MIG devices (G:M, MIG-<uuid>).

Items are matched in libnvidia-container's order (src/cli/common.c select_gpu_device,
reference 1.1): full GPU UUID, PCI bus id, index, MIG UUID, G:M; nvlaunch adds unique
UUID prefixes (nvidia-docker 1.0's NV_GPU).  MIG devices come from procfs
(/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi*/ci*); procfs has no MIG UUIDs, so
NVML (pynvml) is imported lazily, only when a MIG form is asked for.

Pure policy: reads the host through HostView, changes nothing.
"""
from __future__ import annotations

import os
from nvlaunch.core.records import record

from nvlaunch.core.errors import DiscoveryError, SelectionError
from nvlaunch.host.view import HostView, read_text

GPUS_DIR = "/proc/driver/nvidia/gpus"
CAPS_DIR = "/proc/driver/nvidia/capabilities"
MIG_MINORS = "/proc/driver/nvidia-caps/mig-minors"

MODE_VOID = "void"        # nothing injected: not a GPU container
MODE_NONE = "none"        # driver files and control nodes, no GPU nodes
MODE_DEVICES = "devices"  # the selected GPUs (maybe zero of them with "all" on a host without)


@record
class Gpu:
    """One GPU. index: nvidia-smi's (PCI bus order); minor: of /dev/nvidia<minor>;
    bus_id: the Linux PCI address "0000:06:00.0", also the name of its
    /proc/driver/nvidia/gpus/<bus_id> directory."""
    index: int
    minor: int
    uuid: str
    bus_id: str
    model: str


@record
class MigDevice:
    """A MIG device: GPU instance `gi`, compute instance `ci` of `gpu`.  cap_minors are the
    /dev/nvidia-caps/nvidia-cap<N> minors of the gi and ci access files (in that order);
    uuid is only known through NVML (None otherwise)."""
    gpu: Gpu
    gi: int
    ci: int
    uuid: str | None
    cap_minors: tuple[int, ...]


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


# ------------------------------------------------------------------ PCI bus ids

_HEX = frozenset("0123456789abcdefABCDEF")


def _hex(text: str, most: int) -> int | None:
    return int(text, 16) if 0 < len(text) <= most and set(text) <= _HEX else None


def parse_bus_id(text: str) -> tuple[int, int, int, int] | None:
    """"0000:06:00.0", "00000000:06:00.0", "06:00.0" -> (domain, bus, device, function).

    [domain:]bus:device.function in hex (NVML writes the domain as %08x, Linux as %04x);
    parsed by hand rather than with a regular expression, to keep `re` off the hot path."""
    head, dot, fn = text.strip().rpartition(".")
    parts = head.split(":")
    if not dot or len(fn) != 1 or fn not in "01234567" or len(parts) not in (2, 3):
        return None
    if len(parts) == 2:
        parts.insert(0, "0")
    domain, bus, dev = _hex(parts[0], 8), _hex(parts[1], 2), _hex(parts[2], 2)
    if domain is None or bus is None or dev is None:
        return None
    return (domain, bus, dev, int(fn))


def format_bus_id(parts: tuple[int, int, int, int], nvml: bool = False) -> str:
    """Linux form "0000:06:00.0", or NVML's "00000000:06:00.0" with nvml=True."""
    domain, bus, dev, fn = parts
    return (f"{domain:08x}" if nvml else f"{domain:04x}") + f":{bus:02x}:{dev:02x}.{fn:x}"


# ------------------------------------------------------------------ enumeration


def _read(path: str) -> str | None:
    """read_text, with an unreadable file (EACCES, EIO) as a DiscoveryError naming it."""
    try:
        return read_text(path)
    except OSError as err:
        raise DiscoveryError(f"cannot read {path}: {err.strerror or err}") from err


def _fields(text: str) -> dict[str, str]:
    """"Key: \\t value" lines (the driver's information/access files) -> dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def enumerate_gpus(host: HostView) -> tuple[Gpu, ...]:
    """The GPUs the driver exposes, in PCI bus order, indexed 0.. as nvidia-smi does.

    No /proc/driver/nvidia/gpus directory means no GPUs (an empty tuple).  GPUs marked
    "GPU Excluded: Yes" are left out, as NVML leaves them out.  An information file
    without a UUID or device minor is a DiscoveryError naming it.
    """
    base = host.proc(GPUS_DIR)
    try:
        names = os.listdir(base)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except OSError as err:
        raise DiscoveryError(f"cannot list {base}: {err.strerror or err}") from err
    found = []
    for name in names:
        path = f"{base}/{name}/information"
        text = _read(path)
        if text is None:
            continue
        info = _fields(text)
        if info.get("GPU Excluded", "").lower().startswith("yes"):
            continue
        uuid, minor = info.get("GPU UUID", ""), info.get("Device Minor", "")
        if not uuid.upper().startswith("GPU-") or not minor.isdigit():
            raise DiscoveryError(f"{path}: no GPU UUID or Device Minor line",
                                 hint="an unexpected driver file format")
        bus = parse_bus_id(info.get("Bus Location", "")) or parse_bus_id(name)
        if bus is None:
            raise DiscoveryError(f"{path}: unparsable Bus Location "
                                 f"{info.get('Bus Location', '')!r}")
        found.append((bus, int(minor), uuid, info.get("Model", "")))
    found.sort()
    return tuple(Gpu(i, minor, uuid, format_bus_id(bus), model)
                 for i, (bus, minor, uuid, model) in enumerate(found))


def _mig_minors(host: HostView) -> dict[str, int]:
    """/proc/driver/nvidia-caps/mig-minors: "gpu0/gi1/ci0/access 13" lines -> dict."""
    text = _read(host.proc(MIG_MINORS)) or ""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _cap_minor(host: HostView, rel: str, minors: dict[str, int]) -> int | None:
    """The cap minor of capabilities/<rel> ("gpu0/mig/gi1/access"): from mig-minors, else
    the access file's DeviceFileMinor line."""
    key = rel.replace("/mig/", "/", 1)
    if key in minors:
        return minors[key]
    value = _fields(_read(host.proc(f"{CAPS_DIR}/{rel}")) or "").get("DeviceFileMinor", "")
    return int(value) if value.isdigit() else None


def _numbered(names, prefix: str) -> list[int]:
    return sorted(int(n[len(prefix):]) for n in names
                  if n.startswith(prefix) and n[len(prefix):].isdigit())


def enumerate_migs(host: HostView, gpu: Gpu, minors: dict[str, int] | None = None
                   ) -> tuple[MigDevice, ...]:
    """The MIG devices of `gpu` from procfs, ordered by (gi, ci); uuid None.

    That order is nvlaunch's numbering for "G:M"; NVML's MIG index usually agrees (it
    enumerates GPU instances, then their compute instances, by id).
    """
    base = host.proc(f"{CAPS_DIR}/gpu{gpu.minor}/mig")
    try:
        gis = _numbered(os.listdir(base), "gi")
    except OSError:
        return ()
    if minors is None:
        minors = _mig_minors(host)
    out = []
    for gi in gis:
        try:
            cis = _numbered(os.listdir(f"{base}/gi{gi}"), "ci")
        except OSError:
            continue
        gi_minor = _cap_minor(host, f"gpu{gpu.minor}/mig/gi{gi}/access", minors)
        for ci in cis:
            ci_minor = _cap_minor(host, f"gpu{gpu.minor}/mig/gi{gi}/ci{ci}/access", minors)
            caps = tuple(m for m in (gi_minor, ci_minor) if m is not None)
            out.append(MigDevice(gpu, gi, ci, None, caps))
    return tuple(out)


def _nvml_mig_uuids(gpus) -> dict[tuple[str, int, int], str]:
    """{(parent GPU uuid lowercased, gi, ci): MIG uuid} from NVML; raises on NVML failure.

    Imported here, only for MIG requests: pynvml costs ~80 ms plus nvmlInit.
    """
    import pynvml
    pynvml.nvmlInit()
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            parent = pynvml.nvmlDeviceGetUUID(handle)
            parent = parent.decode() if isinstance(parent, bytes) else parent
            try:
                count = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
            except pynvml.NVMLError:
                continue
            for j in range(count):
                try:
                    mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                except pynvml.NVMLError:
                    continue
                uuid = pynvml.nvmlDeviceGetUUID(mh)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                gi = pynvml.nvmlDeviceGetGpuInstanceId(mh)
                ci = pynvml.nvmlDeviceGetComputeInstanceId(mh)
                out[(parent.lower(), gi, ci)] = uuid
        return out
    finally:
        pynvml.nvmlShutdown()


# ------------------------------------------------------------------ selection

# MIG-GPU-<gpu uuid>/<gi>/<ci>: the pre-R470 MIG UUID form, which names its parent.
_MIG_OLD = r"^MIG-(GPU-[0-9a-fA-F-]+)/([0-9]+)/([0-9]+)$"


def _is_index(item: str) -> bool:
    return item.isascii() and item.isdigit()


def _mig_index(item: str) -> tuple[str, str] | None:
    """"G:M" (MIG device M of GPU G) -> ("G", "M")."""
    g, colon, m = item.partition(":")
    return (g, m) if colon and _is_index(g) and _is_index(m) else None

_SYNTAX = ("want all, none, void, or a comma list of GPU indices, GPU UUIDs or unique "
           "UUID prefixes, PCI bus ids, and MIG devices (G:M or MIG-<uuid>)")


class _MigContext:
    """MIG lookups for one select_gpus call: procfs first, NVML once if needed."""

    def __init__(self, host: HostView | None, gpus):
        self.host, self.gpus = host, gpus
        self._minors = None
        self._migs: dict[int, tuple[MigDevice, ...]] = {}
        self._nvml = None
        self.nvml_error: Exception | None = None

    def need_host(self, item: str):
        if self.host is None:
            raise SelectionError(f"MIG device {item!r}: the host's /proc is needed to find it")

    def migs(self, gpu: Gpu) -> tuple[MigDevice, ...]:
        if gpu.index not in self._migs:
            if self._minors is None:
                self._minors = _mig_minors(self.host)
            self._migs[gpu.index] = enumerate_migs(self.host, gpu, self._minors)
        return self._migs[gpu.index]

    def nvml(self) -> dict | None:
        """MIG UUIDs from NVML, or None (the error kept) where NVML cannot be used."""
        if self._nvml is None and self.nvml_error is None:
            try:
                self._nvml = _nvml_mig_uuids(self.gpus)
            except Exception as err:     # ImportError, NVMLError (no driver), OSError
                self.nvml_error = err
        return self._nvml

    def with_uuid(self, mig: MigDevice) -> MigDevice:
        table = self.nvml()
        uuid = table.get((mig.gpu.uuid.lower(), mig.gi, mig.ci)) if table else None
        return mig if uuid is None else MigDevice(mig.gpu, mig.gi, mig.ci, uuid, mig.cap_minors)


def _all(gpus, host) -> Selection:
    """Every GPU, and (as libnvidia-container's select_all_devices) every MIG device."""
    migs: list[MigDevice] = []
    if host is not None:
        minors = None
        for g in gpus:
            if os.path.isdir(host.proc(f"{CAPS_DIR}/gpu{g.minor}/mig")):
                if minors is None:
                    minors = _mig_minors(host)
                migs.extend(enumerate_migs(host, g, minors))
    return Selection(tuple(gpus), tuple(migs), MODE_DEVICES)


def _by_uuid(item: str, gpus) -> Gpu:
    """A full GPU UUID (case-insensitive) or a unique prefix of one."""
    low = item.lower()
    for g in gpus:
        if g.uuid.lower() == low:
            return g
    matches = [g for g in gpus if g.uuid.lower().startswith(low)]
    if len(matches) == 1 and len(item) > len("GPU-"):
        return matches[0]
    if len(matches) > 1:
        raise SelectionError(f"ambiguous GPU UUID prefix {item!r}: matches "
                             + ", ".join(g.uuid for g in matches),
                             hint="give more of the UUID")
    raise SelectionError(f"unknown GPU {item!r}: no GPU has this UUID",
                         hint="see `nvidia-smi -L` or `nvlaunch info`")


def _by_mig_uuid(item: str, gpus, ctx: _MigContext) -> MigDevice:
    ctx.need_host(item)
    import re   # MIG forms only: keep `re` off the plain path
    m = re.match(_MIG_OLD, item, re.I)
    if m:
        parent = next((g for g in gpus if g.uuid.lower() == m.group(1).lower()), None)
        if parent is None:
            raise SelectionError(f"unknown MIG device {item!r}: no GPU {m.group(1)}")
        gi, ci = int(m.group(2)), int(m.group(3))
        mig = next((x for x in ctx.migs(parent) if (x.gi, x.ci) == (gi, ci)), None)
        if mig is None:
            raise SelectionError(f"unknown MIG device {item!r}: GPU {parent.index} has no "
                                 f"GPU instance {gi} / compute instance {ci}")
        return MigDevice(parent, gi, ci, item, mig.cap_minors)
    table = ctx.nvml()
    if table is None:
        raise SelectionError(f"cannot resolve MIG device {item!r}: NVML is unavailable "
                             f"({ctx.nvml_error})", hint="select it as G:M instead")
    for (parent_uuid, gi, ci), uuid in table.items():
        if uuid.lower() == item.lower():
            parent = next((g for g in gpus if g.uuid.lower() == parent_uuid), None)
            if parent is None:
                break
            mig = next((x for x in ctx.migs(parent) if (x.gi, x.ci) == (gi, ci)), None)
            caps = mig.cap_minors if mig else ()
            return MigDevice(parent, gi, ci, uuid, caps)
    raise SelectionError(f"unknown MIG device {item!r}: no MIG device has this UUID",
                         hint="see `nvidia-smi -L`")


def _by_mig_index(item: str, gpu_index: int, mig_index: int, gpus, ctx) -> MigDevice:
    ctx.need_host(item)
    if gpu_index >= len(gpus):
        raise SelectionError(f"unknown MIG device {item!r}: no GPU with index {gpu_index} "
                             f"({_count(gpus)})")
    migs = ctx.migs(gpus[gpu_index])
    if mig_index >= len(migs):
        have = f"it has {len(migs)}" if migs else "MIG is off or it has no MIG devices"
        raise SelectionError(f"unknown MIG device {item!r}: GPU {gpu_index} has no MIG device "
                             f"{mig_index} ({have})")
    return ctx.with_uuid(migs[mig_index])


def _count(gpus) -> str:
    n = len(gpus)
    return "this host has no GPUs" if n == 0 else \
        f"this host has {n} GPU{'s' if n > 1 else ''}: 0" + (f"-{n - 1}" if n > 1 else "")


def select_gpus(spec: str | None, gpus, host: HostView | None = None) -> Selection:
    """Parse a --gpus / NVIDIA_VISIBLE_DEVICES value against `gpus` (enumerate_gpus order).

    SelectionError names the offending item: an unknown index, UUID or bus id, an
    ambiguous UUID prefix, a MIG device that does not exist, or bad syntax.  Duplicates
    are dropped and the request's order kept; a MIG device also selects its parent GPU.
    `host` is needed for MIG devices (and to list MIG devices for "all").
    """
    gpus = tuple(gpus)
    items = [s.strip() for s in (spec or "").split(",")]
    items = [s for s in items if s]
    if not items or items == ["void"]:
        return Selection(mode=MODE_VOID)
    if items == ["none"]:
        return Selection(mode=MODE_NONE)
    if "all" in items:
        if len(set(items)) > 1:
            raise SelectionError(f"bad GPU list {spec!r}: 'all' cannot be combined with "
                                 "other devices")
        return _all(gpus, host)
    for word in ("none", "void"):
        if word in items:
            raise SelectionError(f"bad GPU list {spec!r}: {word!r} cannot be combined with "
                                 "other devices")
    ctx = _MigContext(host, gpus)
    chosen: list[Gpu] = []
    migs: list[MigDevice] = []
    for item in items:
        gpu = mig = None
        bus = parse_bus_id(item)
        if item[:4].upper() == "GPU-":
            gpu = _by_uuid(item, gpus)
        elif bus is not None:
            gpu = next((g for g in gpus if parse_bus_id(g.bus_id) == bus), None)
            if gpu is None:
                raise SelectionError(f"unknown GPU {item!r}: no GPU at PCI bus id "
                                     f"{format_bus_id(bus, nvml=True)}")
        elif _is_index(item):
            n = int(item)
            if n >= len(gpus):
                raise SelectionError(f"unknown GPU {item!r}: no GPU with index {n} "
                                     f"({_count(gpus)})")
            gpu = gpus[n]
        elif item[:4].upper() == "MIG-":
            mig = _by_mig_uuid(item, gpus, ctx)
        elif _mig_index(item):
            g, m = _mig_index(item)
            mig = _by_mig_index(item, int(g), int(m), gpus, ctx)
        else:
            raise SelectionError(f"unknown device {item!r}", hint=_SYNTAX)
        if mig is not None:
            if not any((x.gpu.uuid, x.gi, x.ci) == (mig.gpu.uuid, mig.gi, mig.ci) for x in migs):
                migs.append(mig)
            gpu = mig.gpu
        if gpu not in chosen:
            chosen.append(gpu)
    return Selection(tuple(chosen), tuple(migs), MODE_DEVICES)
