"""`nvlaunch setup runc`: runc has no configuration file, so this prints how to run it
through the runtime shim, or (with --config BUNDLE/config.json) adds the prestart hook
to that bundle's config.json."""
from __future__ import annotations

import json

from nvlaunch.core import errors as E
from nvlaunch.core.files import load_json_object
from nvlaunch.oci.hooks import add_hook, hook_entry
from nvlaunch.setup.common import Writer, hook


def setup_runc(gopts: dict, opts: dict, w: Writer) -> int:
    inv = hook(gopts, opts)
    entry = hook_entry(inv)
    dest = opts.get("config")
    if dest:
        config = load_json_object(dest, missing_ok=True)
        if not config:
            raise E.UsageError(f"{dest}: no runtime config there (make one with `runc spec`)")
        if add_hook(config, entry):
            w.write(dest, json.dumps(config, indent=2) + "\n", backup=False)
        else:
            w.out.write(f"{dest}: already has an nvlaunch hook\n")
        return 0
    shim = " ".join([inv.path] + list(inv.argv[1:]))
    w.out.write(
        "runc has no configuration file to change.  Either run runc through the shim, which\n"
        "adds the hook to the bundle's config.json of containers that set NVIDIA_VISIBLE_DEVICES:\n\n"
        f"    {shim} runtime run --bundle BUNDLE ID        (instead of: runc run --bundle BUNDLE ID)\n\n"
        "or add this entry to hooks.prestart of the bundle's config.json\n"
        "(`nvlaunch setup runc --config BUNDLE/config.json` does it):\n\n"
        + json.dumps(entry, indent=2) + "\n")
    return 0
