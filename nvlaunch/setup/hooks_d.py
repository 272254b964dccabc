"""`nvlaunch setup podman | crio`: an OCI hooks.d file (1.0.0 schema) for the prestart hook.

    podman      /usr/share/containers/oci/hooks.d/nvlaunch.json
    crio        /etc/containers/oci/hooks.d/nvlaunch.json

Why `when: {"always": true}`: the hooks.d schema (containers/common
pkg/hooks/docs/oci-hooks.5.md, 1.0.0) can only match annotations, process.args[0]
(`commands`) and `hasBindMounts`; it has no condition on process.env.  The hook itself
exits at once (doing nothing) when NVIDIA_VISIBLE_DEVICES is unset, empty or void, which
is what NVIDIA's own hooks.d file (`nvidia-ctk runtime configure`) does too.  Since every
container runs it, the entry runs the void gate (nvlaunch/_voidgate.c) where it is built:
that answer then comes without starting Python.
"""
from __future__ import annotations

import json
import os

from nvlaunch.oci.hooks import Invocation, gated, hook_entry
from nvlaunch.setup.common import Writer, hook

HOOKS_FILE = "nvlaunch.json"
DEFAULT_PATHS = {
    "podman": "/usr/share/containers/oci/hooks.d/" + HOOKS_FILE,
    "crio": "/etc/containers/oci/hooks.d/" + HOOKS_FILE,
}


def hooks_d_json(inv: Invocation) -> dict:
    """The OCI hooks.d definition (1.0.0 schema) of the nvlaunch prestart hook, behind the
    void gate where it can be (oci.hooks.gated): every container runs this hook."""
    return {
        "version": "1.0.0",
        "hook": hook_entry(gated(inv)),
        "when": {"always": True},
        "stages": ["prestart"],
    }


def setup_hooks_d(target: str, gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_PATHS[target]
    data = hooks_d_json(hook(gopts, opts))
    w.write(dest, json.dumps(data, indent=2) + "\n")
    if not w.dry_run:
        d = os.path.dirname(os.path.abspath(dest))
        if target == "podman":
            where = (f"podman reads {d} by default" if dest == DEFAULT_PATHS[target]
                     else f"pass --hooks-dir {d} to podman (or list it in containers.conf hooks_dir)")
            w.out.write(f"{where}; run containers with -e NVIDIA_VISIBLE_DEVICES=all\n")
        else:
            w.out.write(f"make sure crio.conf hooks_dir lists {d}\n")
    return 0
