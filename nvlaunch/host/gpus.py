"""The host's GPUs, as the driver's procfs shows them.

`enumerate_gpus(host)` reads /proc/driver/nvidia/gpus/*/information under the proc root
and numbers the GPUs in PCI bus order, as NVML and nvidia-smi do (the /dev/nvidiaN minor
is *not* the index).  MIG devices come from procfs
(/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi*/ci*); procfs has no MIG UUIDs, so
NVML (pynvml) is imported lazily, only when a MIG form is asked for (plan.selection).
Reads the host through a HostView and changes nothing.
"""
from __future__ import annotations

import os
from nvlaunch.core.records import record

from nvlaunch.core.errors import DiscoveryError
from nvlaunch.host.view import HostView, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

GPUS_DIR = "/proc/driver/nvidia/gpus"
CAPS_DIR = "/proc/driver/nvidia/capabilities"
MIG_MINORS = "/proc/driver/nvidia-caps/mig-minors"


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


# ------------------------------------------------------------------ PCI bus ids

_HEX = frozenset("0123456789abcdefABCDEF")


def _decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" and "٣", which int() refuses or reads."""
    return text.isascii() and text.isdigit()


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
        raise DiscoveryError(f"cannot read {path}: {err.strerror or err}", errno=err.errno) from err


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
    base = host.proc(GPUS_DIR, "names")
    try:
        names = os.listdir(base)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except OSError as err:
        raise DiscoveryError(f"cannot list {base}: {err.strerror or err}", errno=err.errno) from err
    found = []
    for name in names:
        path = host.proc(f"{GPUS_DIR}/{name}/information")
        text = _read(path)
        if text is None:
            continue
        info = _fields(text)
        if info.get("GPU Excluded", "").lower().startswith("yes"):
            continue
        uuid, minor = info.get("GPU UUID", ""), info.get("Device Minor", "")
        if not uuid.upper().startswith("GPU-") or not _decimal(minor):
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


def mig_minors(host: HostView) -> dict[str, int]:
    """/proc/driver/nvidia-caps/mig-minors: "gpu0/gi1/ci0/access 13" lines -> dict."""
    text = _read(host.proc(MIG_MINORS)) or ""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and _decimal(parts[1]):
            out[parts[0]] = int(parts[1])
    return out


def _cap_minor(host: HostView, rel: str, minors: dict[str, int]) -> int | None:
    """The cap minor of capabilities/<rel> ("gpu0/mig/gi1/access"): from mig-minors, else
    the access file's DeviceFileMinor line."""
    key = rel.replace("/mig/", "/", 1)
    if key in minors:
        return minors[key]
    value = _fields(_read(host.proc(f"{CAPS_DIR}/{rel}")) or "").get("DeviceFileMinor", "")
    return int(value) if _decimal(value) else None


def _numbered(names: Iterable[str], prefix: str) -> list[int]:
    return sorted(int(n[len(prefix):]) for n in names
                  if n.startswith(prefix) and _decimal(n[len(prefix):]))


def enumerate_migs(host: HostView, gpu: Gpu, minors: dict[str, int] | None = None
                   ) -> tuple[MigDevice, ...]:
    """The MIG devices of `gpu` from procfs, ordered by (gi, ci); uuid None.

    That order is nvlaunch's numbering for "G:M"; NVML's MIG index usually agrees (it
    enumerates GPU instances, then their compute instances, by id).
    """
    base = host.proc(f"{CAPS_DIR}/gpu{gpu.minor}/mig", "names")
    try:
        gis = _numbered(os.listdir(base), "gi")
    except OSError:
        return ()
    if minors is None:
        minors = mig_minors(host)
    out = []
    for gi in gis:
        try:
            cis = _numbered(os.listdir(host.proc(f"{CAPS_DIR}/gpu{gpu.minor}/mig/gi{gi}", "names")), "ci")
        except OSError:
            continue
        gi_minor = _cap_minor(host, f"gpu{gpu.minor}/mig/gi{gi}/access", minors)
        for ci in cis:
            ci_minor = _cap_minor(host, f"gpu{gpu.minor}/mig/gi{gi}/ci{ci}/access", minors)
            caps = tuple(m for m in (gi_minor, ci_minor) if m is not None)
            out.append(MigDevice(gpu, gi, ci, None, caps))
    return tuple(out)


def nvml_mig_uuids(gpus: Iterable[Gpu]) -> dict[tuple[str, int, int], str]:
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


