"""build_plan(): a Request and the host -> the Plan every front end applies.

Pure policy: it reads the host (ld cache, /proc/driver/nvidia, /dev) through a HostView
and returns plain data; nothing is mounted or written here.  Order of the result:
device nodes, driver files and their links, then the /proc/driver/nvidia view.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core.errors import DiscoveryError, SelectionError
from nvlaunch.host import driver as drv
from nvlaunch.host.container import MULTIARCH_LIBDIR
from nvlaunch.host.driver_files import Driver
from nvlaunch.host.gpus import Gpu, enumerate_gpus
from nvlaunch.host.syslibs import system_libs
from nvlaunch.host.view import HostView, read_text
from nvlaunch.plan.capabilities import devices_for, files_for, parse_capabilities
from nvlaunch.plan.records import (IF_ABSENT, OPTIONAL, REQUIRED, BindDevice, BindDir, BindFile, Plan,
                                   Symlink, Tmpfs, WriteFile)
from nvlaunch.plan.request import Request
from nvlaunch.plan.selection import select_gpus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from nvlaunch.host.driver_files import DriverFile
    from nvlaunch.plan.records import Entry
    from nvlaunch.plan.selection import Selection

PROC_NVIDIA = "/proc/driver/nvidia"
# Files copied into the container's /proc/driver/nvidia; params gets ModifyDeviceFiles: 0
# so that NVML in the container never tries to create device nodes.
PROC_COPIES = ("version", "params", "registry")
LIB32_DIRS = {"/usr/lib/x86_64-linux-gnu": "/usr/lib/i386-linux-gnu", "/usr/lib64": "/usr/lib"}


def build_plan(req: Request, host: HostView, libdir: str | None = MULTIARCH_LIBDIR,
               driver: Driver | None = None, gpus: tuple[Gpu, ...] | None = None) -> Plan:
    """The plan for `req`.  `libdir` is the container's library directory (None: keep each
    library's host directory, as a CDI spec does).  `driver` and `gpus` may be passed in
    when the caller already discovered them.  NVIDIA_REQUIRE_* is not checked here (that
    may load the host's libcuda): plan.cache does it before a plan is built."""
    if req.void:
        return Plan()
    caps = parse_capabilities(req.capabilities)
    driver = driver or drv.discover(host)
    all_gpus = enumerate_gpus(host) if gpus is None else gpus
    selection = select_gpus(req.gpus, all_gpus, host)

    entries: list[Entry] = []
    devices: list[BindDevice] = []
    for path, required in devices_for(caps):
        node = _device(host, path, required)
        if node:
            entries.append(node)
    for gpu in selection.gpus:
        node = _device(host, f"/dev/nvidia{gpu.minor}", True)
        assert node is not None     # required: a missing node raised
        entries.append(node)
        if caps & {"graphics", "display"}:
            entries.extend(_drm_nodes(host, gpu.bus_id))
    for mig in selection.migs:
        for minor in mig.cap_minors:
            node = _device(host, f"/dev/nvidia-caps/nvidia-cap{minor}", False)
            if node:
                entries.append(node)
    for channel in _imex_channels(req):
        node = _device(host, f"/dev/nvidia-caps-imex-channels/channel{channel}", True)
        assert node is not None
        entries.append(node)
    devices = [e for e in entries if isinstance(e, BindDevice)]

    files = files_for(driver, caps)
    _check_essentials(files, caps, driver)
    ldcache: list[tuple[str, str, bool]] = []
    used_libdir = libdir
    for f in files:
        if f.kind in ("lib", "lib32"):
            if libdir is None:
                target_dir = os.path.dirname(_unroot(host, f.host_path))
            elif f.kind == "lib32":
                target_dir = LIB32_DIRS.get(libdir, "/usr/lib32")
            else:
                target_dir = libdir
            entries.append(BindFile(f.host_path, f"{target_dir}/{f.name}"))
            for link in f.links:
                if link != f.name:
                    entries.append(Symlink(f.name, f"{target_dir}/{link}"))
            if f.soname:
                ldcache.append((f.soname, f"{target_dir}/{f.soname}", f.kind == "lib32"))
            if f.kind == "lib" and libdir is None:
                used_libdir = target_dir
        elif f.kind == "ipc":
            assert f.container_path is not None     # discovery gives one to all but libraries
            entries.append(BindDir(f.host_path, f.container_path, readonly=False, recursive=False,
                                   policy=OPTIONAL))
        else:
            assert f.container_path is not None
            entries.append(BindFile(f.host_path, f.container_path))

    if libdir is not None:
        # (a CDI spec cannot bind on a condition, so it lists no system libraries)
        for dep in system_libs(host, files, driver.files):
            dst = f"{libdir}/{dep.name}"
            entries.append(BindFile(dep.host_path, dst, policy=IF_ABSENT))
            ldcache.append((dep.name, dst, False))

    entries.extend(_proc_view(host, selection))
    env = [("NVIDIA_VISIBLE_DEVICES", ",".join(g.uuid for g in selection.gpus) or "none"),
           ("NVIDIA_DRIVER_CAPABILITIES", ",".join(sorted(caps)))]
    return Plan(entries=tuple(entries), devices=tuple(devices), env=tuple(env),
                libdir=used_libdir, ldcache=tuple(ldcache),
                notes=(f"driver {driver.version}",))


# Libraries without which a capability cannot work at all: their absence is an error (a
# container would start and fail obscurely), where other missing driver libraries are
# left out, as libnvidia-container does (driver versions differ in what they ship).
ESSENTIAL_LIBS = {"compute": "libcuda.so.1", "utility": "libnvidia-ml.so.1"}


def _check_essentials(files: Iterable[DriverFile], caps: Collection[str], driver: Driver) -> None:
    have = {f.soname for f in files if f.kind == "lib"}
    for cap, soname in ESSENTIAL_LIBS.items():
        if cap in caps and soname not in have:
            raise DiscoveryError(
                f"driver library {soname} (capability {cap}) not found for driver "
                f"{driver.version}", "is the driver installed completely? check the ld cache "
                "(ldconfig -p) and --driver-root")


def _unroot(host: HostView, path: str) -> str:
    """A host path under the driver root, as the path the host itself uses."""
    root = host.driver_root.rstrip("/")
    return path[len(root):] if root and path.startswith(root + "/") else path


def _device(host: HostView, path: str, required: bool) -> BindDevice | None:
    src = host.dev(path)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        if required:
            raise DiscoveryError(f"device node {path} not found at {src}") from None
        return None
    if not stat.S_ISCHR(st.st_mode):
        raise DiscoveryError(f"{src}: not a character device")
    return BindDevice(src, path, os.major(st.st_rdev), os.minor(st.st_rdev))


def _drm_nodes(host: HostView, bus_id: str) -> list[BindDevice]:
    """/dev/dri/card* and renderD* of one GPU, matched by PCI bus id through by-path."""
    out = []
    for kind in ("card", "render"):
        link = host.dev(f"/dev/dri/by-path/pci-{bus_id.lower()}-{kind}")
        try:
            name = os.path.basename(os.readlink(link))
        except OSError:
            continue
        node = _device(host, f"/dev/dri/{name}", False)
        if node:
            out.append(node)
    return out


def _imex_channels(req: Request) -> list[int]:
    raw = req.getenv("NVIDIA_IMEX_CHANNELS")
    if not raw or raw.strip() in ("", "void", "none", "all"):
        return []   # "all" is ignored, as NVIDIA's legacy mode does
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 9:
            raise SelectionError(f"NVIDIA_IMEX_CHANNELS: {item!r} is not a channel number")
        out.append(int(item))
    return out


def _proc_view(host: HostView, selection: Selection) -> list[Entry]:
    """A tmpfs over /proc/driver/nvidia holding copies of version/params/registry and the
    selected GPUs' directories only."""
    out: list[Entry] = [Tmpfs(PROC_NVIDIA)]
    for name in PROC_COPIES:
        text = read_text(host.proc(f"{PROC_NVIDIA}/{name}"))
        if text is None:
            continue
        if name == "params":
            text = text.replace("ModifyDeviceFiles: 1", "ModifyDeviceFiles: 0")
        out.append(WriteFile(f"{PROC_NVIDIA}/{name}", text.encode(), 0o444))
    for gpu in selection.gpus:
        src = host.proc(f"{PROC_NVIDIA}/gpus/{gpu.bus_id}", "names")
        out.append(BindDir(src, f"{PROC_NVIDIA}/gpus/{gpu.bus_id}", readonly=True, recursive=False,
                           policy=REQUIRED))
    return out
