"""`nvlaunch setup docker`: runtime "nvlaunch" merged into /etc/docker/daemon.json.

The entry is {"path": NVLAUNCH, "runtimeArgs": [..., "runtime"]}: dockerd wraps a runtime
with runtimeArgs in a script `PATH ARGS $@`, so runc's arguments follow "runtime"
(frontends.runtime_shim).  dockerd gives the runtime its own environment, so the host
roots and switches given to setup must be in dockerd's environment (said on output).
"""
from __future__ import annotations

import json

from nvlaunch.core import errors as E
from nvlaunch.core.files import load_json_object
from nvlaunch.setup.common import RUNTIME_NAME, Writer, executable, hook, settings

DEFAULT_CONFIG = "/etc/docker/daemon.json"


def docker_merge(existing: dict, name: str, path: str, args: list | None = None) -> dict:
    """daemon.json with runtimes[name] set; every other key kept."""
    merged = dict(existing)
    runtimes = merged.get("runtimes")
    if runtimes is None:
        runtimes = {}
    if not isinstance(runtimes, dict):
        raise E.UsageError("daemon.json: \"runtimes\" is not an object")
    runtimes = dict(runtimes)
    runtimes[name] = {"path": path, "runtimeArgs": list(args or []) + ["runtime"]}
    merged["runtimes"] = runtimes
    return merged


def setup_docker(gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_CONFIG
    name = opts.get("runtime_name") or RUNTIME_NAME
    inv = hook(gopts, opts)
    path, args = executable(inv, "setup docker")
    merged = docker_merge(load_json_object(dest, missing_ok=True), name, path, args)
    w.write(dest, json.dumps(merged, indent=2) + "\n")
    if settings(inv):
        w.out.write("note: dockerd passes its own environment to the runtime; set "
                    + " ".join(settings(inv)) + " in dockerd's environment\n")
    if not w.dry_run:
        w.out.write(f"restart dockerd, then: docker run --runtime={name} "
                    "-e NVIDIA_VISIBLE_DEVICES=all IMAGE\n")
    return 0
