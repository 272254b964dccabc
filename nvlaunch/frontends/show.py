"""`info`, `list`, `features` and `run --dry-run`: what nvlaunch sees and would do.

Readable tables by default, `--json` for scripts.  Nothing here changes the host.
"""
from __future__ import annotations

import json
import os
import sys

from nvlaunch.plan.records import IF_ABSENT, BindDevice, BindDir, BindFile, Symlink, Tmpfs, WriteFile


def _opts(args, allowed, command):
    from nvlaunch.cli.main import parse_command
    table = {f"--{name.replace('_', '-')}": (name, takes, False) for name, takes in allowed.items()}
    return parse_command(args, table, command)[0]


def cmd_info(gopts, args) -> int:
    from nvlaunch.host import driver as drv
    from nvlaunch.host import gpus as gp
    from nvlaunch.cli.main import _host
    opts = _opts(args, {"json": False}, "info")
    host = _host(gopts)
    driver = drv.discover(host)
    gpus = gp.enumerate_gpus(host)
    caps = {}
    for cap in sorted(drv.CAPABILITIES):
        files = drv.files_for(driver, {cap})
        caps[cap] = {"libraries": [f.name for f in files if f.kind in ("lib", "lib32")],
                     "binaries": [f.name for f in files if f.kind == "bin"],
                     "other": [f.container_path for f in files if f.kind not in ("lib", "lib32", "bin")],
                     "devices": list(drv.devices_for({cap}))}
    data = {"driver_version": driver.version, "discovery": getattr(driver, "source", "ldcache"),
            "roots": {"driver": host.driver_root, "dev": host.dev_root, "proc": host.proc_root},
            "gpus": [_gpu_json(g) for g in gpus], "capabilities": caps}
    if opts.get("json"):
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    out.write(f"NVIDIA driver {driver.version} (found through {data['discovery']})\n")
    out.write(f"roots: driver={host.driver_root} dev={host.dev_root} proc={host.proc_root}\n\n")
    _gpu_table(gpus, out)
    out.write("\ncapability  libraries  binaries  other  devices\n")
    for cap, d in caps.items():
        out.write(f"{cap:<11} {len(d['libraries']):>9}  {len(d['binaries']):>8}  {len(d['other']):>5}  "
                  f"{' '.join(d['devices']) or '-'}\n")
    return 0


def _gpu_json(g) -> dict:
    return {"index": g.index, "minor": g.minor, "uuid": g.uuid, "bus_id": g.bus_id, "model": g.model}


def _gpu_table(gpus, out) -> None:
    out.write(f"{'index':>5}  {'minor':>5}  {'bus id':<14} {'uuid':<42} model\n")
    for g in gpus:
        out.write(f"{g.index:>5}  {g.minor:>5}  {g.bus_id:<14} {g.uuid:<42} {g.model}\n")
    if not gpus:
        out.write("(no GPUs)\n")


def cmd_list(gopts, args) -> int:
    from nvlaunch.plan.build import build_plan
    from nvlaunch.cli.main import _host
    from nvlaunch.plan.request import Request
    opts = _opts(args, {"json": False, "gpus": True, "capabilities": True}, "list")
    plan = build_plan(Request(gpus=opts.get("gpus", "all"), capabilities=opts.get("capabilities")),
                      _host(gopts))
    if opts.get("json"):
        json.dump(plan_json(plan), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print_plan(plan, sys.stdout)
    return 0


def plan_json(plan) -> dict:
    out = {"devices": [], "files": [], "links": [], "made": [], "env": dict(plan.env),
           "libdir": plan.libdir, "ldcache": [list(p) for p in plan.ldcache]}
    for e in plan.entries:
        if isinstance(e, BindDevice):
            out["devices"].append({"path": e.dst, "host_path": e.src, "major": e.major, "minor": e.minor})
        elif isinstance(e, (BindFile, BindDir)):
            item = {"path": e.dst, "host_path": e.src, "readonly": e.readonly}
            if e.policy == IF_ABSENT:
                item["only_if_absent"] = True   # a system library the container may have
            out["files"].append(item)
        elif isinstance(e, Symlink):
            out["links"].append({"path": e.link, "target": e.target})
        elif isinstance(e, (WriteFile, Tmpfs)):
            out["made"].append({"path": e.dst, "kind": type(e).__name__.lower()})
    return out


def print_plan(plan, out) -> None:
    if plan.empty:
        out.write("nothing to inject (no GPU requested)\n")
        return
    for e in plan.entries:
        if isinstance(e, BindDevice):
            out.write(f"device  {e.dst}  ({e.major}:{e.minor}, from {e.src})\n")
        elif isinstance(e, (BindFile, BindDir)):
            note = " (only if the container has no such library)" if e.policy == IF_ABSENT else ""
            out.write(f"bind    {e.dst}  <- {e.src}{' (ro)' if e.readonly else ''}{note}\n")
        elif isinstance(e, Symlink):
            out.write(f"link    {e.link} -> {e.target}\n")
        elif isinstance(e, WriteFile):
            out.write(f"file    {e.dst}  ({len(e.data)} bytes)\n")
        elif isinstance(e, Tmpfs):
            out.write(f"tmpfs   {e.dst}\n")
    for soname, path, _ in plan.ldcache:
        out.write(f"ldcache {soname} => {path}\n")
    for k, v in plan.env:
        out.write(f"env     {k}={v}\n")


def cmd_features(gopts, args) -> int:
    """What this host supports: the single capability probe tests and docs refer to."""
    opts = _opts(args, {"json": False}, "features")
    data = features()
    if opts.get("json"):
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for k, v in data.items():
            sys.stdout.write(f"{k}: {v}\n")
    return 0


def features() -> dict:
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    mounts = read("/proc/self/mountinfo") or ""
    fstypes = {line.split(" - ")[1].split()[0] for line in mounts.splitlines() if " - " in line}
    cg = "hybrid" if {"cgroup", "cgroup2"} <= fstypes else ("v2" if "cgroup2" in fstypes else
                                                             "v1" if "cgroup" in fstypes else "none")
    return {
        "euid": os.geteuid(),
        "cgroup": cg,
        "unprivileged_userns": read("/proc/sys/kernel/unprivileged_userns_clone") != "0"
        and read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") != "1"
        and read("/proc/sys/user/max_user_namespaces") not in (None, "0"),
        "newuidmap": os.path.exists("/usr/bin/newuidmap"),
        "overlay": "overlay" in (read("/proc/filesystems") or ""),
        "kernel": os.uname().release,
    }
