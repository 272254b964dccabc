"""`nvlaunch setup podman --cdi`: nvlaunch's CDI spec written where runtimes read it."""
from __future__ import annotations

import os
import sys

from nvlaunch.core.argv import parse_command
from nvlaunch.core.errors import UsageError, quote
from nvlaunch.core.files import write_atomic
from nvlaunch.host.view import HostView
from nvlaunch.oci.hooks import invocation
from nvlaunch.render.cdi import SPEC_MODE, SPEC_OPTS, device_names, render, spec_from_options
from nvlaunch.setup.common import make_dirs, remove_dirs

DEFAULT_SPEC_PATH = "/etc/cdi/nvidia.json"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")          # where runtimes look for specs
SETUP_OPTS = {**SPEC_OPTS, "--cdi": ("cdi", False, False), "--dry-run": ("dry_run", False, False)}
USAGE = """usage: nvlaunch setup podman --cdi [--output FILE] [--format json|yaml] [--cdi-version V]
                                  [--hook-path PATH] [--capabilities CAPS] [--dry-run]
Write nvlaunch's CDI spec to /etc/cdi/nvidia.json (or FILE), mode 0644.
"""


def _other_specs(kind: str, ours: str) -> list:
    """Spec files other than `ours` in the CDI directories that declare `kind`; two
    specs with the same device names make the runtime refuse those devices."""
    out = []
    for d in SPEC_DIRS:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = os.path.join(d, name)
            if os.path.realpath(p) == os.path.realpath(ours) or not name.endswith((".json", ".yaml", ".yml")):
                continue
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    text = f.read(65536)
            except OSError:
                continue
            if kind in text:
                out.append(p)
    return out


def setup_cdi(args: list, gopts: dict | None = None) -> int:
    """`nvlaunch setup podman --cdi [--output FILE] [--format F] [--cdi-version V]
    [--hook-path PATH] [--capabilities CAPS]`: write the spec to /etc/cdi/nvidia.json
    (or FILE).  `args` are the options after `setup podman`; with --dry-run the spec is
    printed with the path it would go to, and nothing is written."""
    parsed = parse_command(list(args), SETUP_OPTS, "setup podman", USAGE)
    if parsed is None:
        return 0
    opts = parsed[0]
    dry_run = bool(opts.get("dry_run"))
    path = opts.get("output") or DEFAULT_SPEC_PATH
    hook = invocation(opts.get("hook_path"), gopts)
    spec, fmt = spec_from_options(HostView.from_options(gopts), hook, {**opts, "output": path})
    text = render(spec, fmt)
    for other in _other_specs(spec["kind"], path):
        sys.stderr.write(f"nvlaunch: warning: {other} also declares {spec['kind']}; "
                         "remove one of them or the runtime refuses the devices\n")
    if dry_run:
        sys.stdout.write(f"# would write {path} (mode 0644)\n{text}")
        return 0
    if path.endswith("/") or os.path.isdir(path):
        raise UsageError(f"--output {quote(path)}: not a file name (it names a directory)")
    made = make_dirs(os.path.dirname(os.path.abspath(path)))
    try:
        write_atomic(path, text, SPEC_MODE)
    except OSError as err:
        remove_dirs(made)
        raise UsageError(f"--output {quote(path)}: {err.strerror or err}", errno=err.errno) from None
    sys.stdout.write(f"wrote {path}: " + ", ".join(device_names(spec)) + "\n"
                     f"use: podman run --device {spec['kind']}=all ...\n")
    return 0
