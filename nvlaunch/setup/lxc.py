"""`nvlaunch setup lxc NAME`: nvlaunch's block in the container's LXC config."""
from __future__ import annotations

import os
import sys

from nvlaunch.core.argv import parse_opts
from nvlaunch.core.errors import UsageError
from nvlaunch.core.files import write_atomic
from nvlaunch.host.view import HostView
from nvlaunch.oci.hooks import invocation, shell_line
from nvlaunch.plan.build import build_plan
from nvlaunch.plan.request import Request
from nvlaunch.render.lxc import (DEFAULT_CAPABILITIES, DEFAULT_GPUS, config_block, has_other_hooks,
                                 updated_config)
from nvlaunch.setup.common import hook_path_opt, read_text

LXC_PATH = "/var/lib/lxc"
SETUP_OPTS = {
    "--config": ("config", True, False), "--lxcpath": ("lxcpath", True, False),
    "-P": ("lxcpath", True, False), "--gpus": ("gpus", True, False),
    "--capabilities": ("capabilities", True, False), "--hook-path": ("hook_path", True, False),
    "--dry-run": ("dry_run", False, False), "--help": ("help", False, False),
    "-h": ("help", False, False),
}
SETUP_USAGE = """usage: nvlaunch setup lxc NAME [--config PATH] [--lxcpath DIR] [--gpus SPEC]
                          [--capabilities CAPS] [--hook-path PATH] [--dry-run]
Add (or replace) nvlaunch's block in the container's config (default
/var/lib/lxc/NAME/config): the mount hook, NVIDIA_VISIBLE_DEVICES and
NVIDIA_DRIVER_CAPABILITIES as lxc.environment, and device rules (cgroup v1 and v2) for
the nodes the hook will bind.  --dry-run prints the block.
"""


def hook_line(gopts: dict | None, hook_path: str | None = None) -> str:
    """The shell command line for lxc.hook.mount (LXC runs it with /bin/sh -c): the host
    roots as options, since LXC gives hooks the container's environment."""
    host = HostView.from_options(gopts)
    flags: list[str] = []
    for flag, value in (("--driver-root", host.driver_root), ("--dev-root", host.dev_root),
                        ("--proc-root", host.proc_root)):
        if value != "/":
            flags += [flag, value]
    return shell_line(invocation(hook_path, gopts), *flags, "lxc-hook")


def setup_lxc(args: list, gopts: dict | None = None) -> int:
    """`nvlaunch setup lxc NAME [--config PATH] [--lxcpath DIR] [--gpus SPEC]
    [--capabilities CAPS] [--hook-path PATH] [--dry-run]`."""
    opts, rest = parse_opts(list(args), SETUP_OPTS, "setup lxc", stop_at_positional=False)
    if opts.get("help"):
        sys.stdout.write(SETUP_USAGE)
        return 0
    names = opts.get("_positional", []) + list(rest)
    dry_run = bool(opts.get("dry_run"))
    if len(names) > 1:
        raise UsageError(f"setup lxc: one container name, not {' '.join(names)!r}")
    if not names and not opts.get("config"):
        raise UsageError("setup lxc: need the container NAME (or --config PATH)")
    config = opts.get("config") or os.path.join(opts.get("lxcpath", LXC_PATH), names[0], "config")
    found = read_text(config)
    if found is None and not dry_run:
        raise UsageError(f"setup lxc: {config}: no such file (create the container first, "
                         "or pass --config)")
    text = found or ""
    version = 0 if has_other_hooks(text) else 1
    gpus, caps = opts.get("gpus", DEFAULT_GPUS), opts.get("capabilities", DEFAULT_CAPABILITIES)
    plan = build_plan(Request(gpus=gpus, capabilities=caps), HostView.from_options(gopts))
    block = config_block(plan, hook_line(gopts, hook_path_opt(opts)), gpus, caps,
                         hook_version=version)
    if dry_run:
        sys.stdout.write(block)
        return 0
    try:
        write_atomic(config, updated_config(text, block), os.stat(config).st_mode & 0o7777)
    except OSError as err:
        raise UsageError(f"setup lxc: {config}: {err.strerror or err}", errno=err.errno) from None
    sys.stdout.write(f"updated {config}\n")
    if version == 0:
        sys.stdout.write("note: the config has other hooks, so lxc.hook.version is left as it "
                         "is; nvlaunch lxc-hook reads its type from argv then\n")
    return 0
