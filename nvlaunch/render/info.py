"""What `nvlaunch info` shows: the driver, the GPUs and what each capability injects, as
data (for --json) and as text."""
from __future__ import annotations

from nvlaunch.host.driver_files import CAPABILITIES, Driver
from nvlaunch.host.gpus import Gpu
from nvlaunch.host.view import HostView
from nvlaunch.plan.capabilities import devices_for, files_for


def info_data(host: HostView, driver: Driver, gpus: tuple[Gpu, ...]) -> dict:
    caps = {}
    for cap in sorted(CAPABILITIES):
        files = files_for(driver, {cap})
        caps[cap] = {"libraries": [f.name for f in files if f.kind in ("lib", "lib32")],
                     "binaries": [f.name for f in files if f.kind == "bin"],
                     "other": [f.container_path for f in files
                               if f.kind not in ("lib", "lib32", "bin")],
                     "devices": [path for path, _ in devices_for({cap})]}
    return {"driver_version": driver.version, "discovery": driver.source,
            "roots": {"driver": host.driver_root, "dev": host.dev_root, "proc": host.proc_root},
            "gpus": [gpu_json(g) for g in gpus], "capabilities": caps}


def gpu_json(g: Gpu) -> dict:
    return {"index": g.index, "minor": g.minor, "uuid": g.uuid, "bus_id": g.bus_id, "model": g.model}


def info_text(data: dict, gpus: tuple[Gpu, ...]) -> str:
    roots = data["roots"]
    out = [f"NVIDIA driver {data['driver_version']} (found through {data['discovery']})\n",
           f"roots: driver={roots['driver']} dev={roots['dev']} proc={roots['proc']}\n\n",
           gpu_table(gpus),
           "\ncapability  libraries  binaries  other  devices\n"]
    for cap, d in data["capabilities"].items():
        out.append(f"{cap:<11} {len(d['libraries']):>9}  {len(d['binaries']):>8}  "
                   f"{len(d['other']):>5}  {' '.join(d['devices']) or '-'}\n")
    return "".join(out)


def gpu_table(gpus: tuple[Gpu, ...]) -> str:
    out = [f"{'index':>5}  {'minor':>5}  {'bus id':<14} {'uuid':<42} model\n"]
    for g in gpus:
        out.append(f"{g.index:>5}  {g.minor:>5}  {g.bus_id:<14} {g.uuid:<42} {g.model}\n")
    if not gpus:
        out.append("(no GPUs)\n")
    return "".join(out)
