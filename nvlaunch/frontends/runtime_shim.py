"""`nvlaunch runtime [RUNTIME-ARGS...]`: the thin OCI runtime shim (what
nvidia-container-runtime does in its "legacy" mode).

Called exactly like runc (by docker, containerd's runc shim, podman --runtime, or by
hand).  When the arguments hold the `create` or `run` command, the bundle's config.json
(`--bundle B` / `-b B` / `--bundle=B`, else the current directory, as runc does) gets the
nvlaunch prestart hook, unless it already has one; then the real runtime is exec'd with
the arguments unchanged.  Every other command (start, state, kill, delete, exec, ...) is
exec'd straight away.

- The hook is only added when the container asks for GPUs (NVIDIA_VISIBLE_DEVICES set and
  not void in process.env), so other containers do not pay for a hook process; nor where
  a GPU hook is there already (dockerd's nvidia-container-runtime-hook for --gpus).
- NVIDIA_VISIBLE_DEVICES in process.env is rewritten to the selected GPUs' UUIDs, as
  `run` shows them (uuid_env).
- The hook entry is oci.hooks.invocation()'s: `nvlaunch hook prestart` with an explicit
  environment carrying the shim's own NVLAUNCH_* settings (or the global --*-root
  options), never the container's.
- config.json is rewritten atomically (a temporary file in the bundle, renamed over it,
  same mode); every other key is kept as it was.
- The real runtime: `--runtime-path PATH` given first (before the runtime's own
  arguments), else NVLAUNCH_RUNTIME, else the first of runc, crun found on PATH.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from nvlaunch.core import errors as E
from nvlaunch.core.files import load_json_object, write_atomic
from nvlaunch.oci.hooks import add_hook, hook_entry, invocation
from nvlaunch.oci.state import selection_env

ENV_RUNTIME = "NVLAUNCH_RUNTIME"
DEFAULT_RUNTIMES = ("runc", "crun")

# Global options of runc and crun that take a value (as a separate argument unless
# written --opt=value); every other option before the command takes none.
GLOBAL_VALUE_OPTS = frozenset({"--log", "--log-format", "--root", "--criu", "--rootless",
                               "--cgroup-manager", "--log-level"})
BUNDLE_OPTS = ("--bundle", "-b")
CREATE_COMMANDS = ("create", "run")


def parse_runtime_args(args: list) -> tuple[str | None, str | None]:
    """(command, bundle) of runc-style arguments; bundle is None unless the command is
    create/run (then the given bundle, or the current directory)."""
    i = 0
    command = None
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            command = args[i] if i < len(args) else None
            break
        if arg.startswith("-"):
            if "=" not in arg and arg in GLOBAL_VALUE_OPTS:
                i += 1
            i += 1
            continue
        command = arg
        break
    if command not in CREATE_COMMANDS:
        return command, None
    bundle = None
    j = i + 1
    while j < len(args):
        arg = args[j]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in BUNDLE_OPTS:
            if eq:
                bundle = value
            elif j + 1 < len(args):
                bundle = args[j + 1]
                j += 1
        elif arg.startswith("-b") and len(arg) > 2 and not arg.startswith("--"):
            bundle = arg[2:]                 # -bDIR
        j += 1
    return command, os.path.abspath(bundle or os.getcwd())


def wants_gpus(config: dict) -> bool:
    value = selection_env(config).get("NVIDIA_VISIBLE_DEVICES")
    return value is not None and value.strip() not in ("", "void")


def patch_bundle(bundle: str, entry: dict, gopts: dict | None = None) -> bool:
    """Add the hook to `bundle`/config.json when the container wants GPUs (unless a GPU
    hook is there already: ours, or the one dockerd adds for --gpus) and, with `gopts`,
    name the GPUs by UUID in NVIDIA_VISIBLE_DEVICES; True if written."""
    path = os.path.join(bundle, "config.json")
    config = load_json_object(path)
    if not wants_gpus(config):
        return False
    changed = add_hook(config, entry)
    if gopts is not None:
        changed = uuid_env(config, bundle, gopts) or changed
    if not changed:
        return False
    write_atomic(path, json.dumps(config))
    return True


def uuid_env(config: dict, bundle: str, gopts: dict) -> bool:
    """NVIDIA_VISIBLE_DEVICES of process.env rewritten to the selected GPUs' UUIDs (what
    `run` shows its containers; runc reads process.env before any hook runs, so only the
    shim can do it).  A selection that does not resolve is left as it is: the hook then
    fails with its own one-line error, which the runtime reports."""
    from nvlaunch.host.view import HostView
    from nvlaunch.oci.state import container_rootfs
    from nvlaunch.plan.cache import plan_for_rootfs
    from nvlaunch.plan.request import Request
    try:
        rootfs = container_rootfs({"bundle": bundle}, config)
        plan = plan_for_rootfs(Request.from_env(selection_env(config)),
                               HostView.from_options(gopts), rootfs)[0]
    except (E.NvlaunchError, OSError):
        return False
    value = dict(plan.env).get("NVIDIA_VISIBLE_DEVICES")
    env = config["process"]["env"]
    if not value or value == "none":
        return False
    new = [e for e in env if not (isinstance(e, str) and e.startswith("NVIDIA_VISIBLE_DEVICES="))]
    new.append(f"NVIDIA_VISIBLE_DEVICES={value}")
    if new == env:
        return False
    config["process"]["env"] = new
    return True


def real_runtime(explicit: str | None = None) -> str:
    """The runtime to exec: --runtime-path, NVLAUNCH_RUNTIME, else runc or crun on PATH."""
    name = explicit or os.environ.get(ENV_RUNTIME)
    if name:
        return name
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else None
    for cand in DEFAULT_RUNTIMES:
        found = shutil.which(cand)
        if found and os.path.realpath(found) != me:
            return found
    raise E.UsageError("no OCI runtime found (runc, crun); set NVLAUNCH_RUNTIME")


RUNTIME_USAGE = """usage: nvlaunch runtime [--runtime-path RUNC] RUNC-ARGS...
  an OCI runtime for docker and containerd: runc (or RUNC) with nvlaunch's prestart hook
  added to the bundle of `create` and `run` when the container asks for GPUs
  (NVIDIA_VISIBLE_DEVICES); every other command is runc's own (`runc --help`)
"""


def cmd_runtime(gopts: dict, args: list) -> int:
    if args in (["--help"], ["-h"]):
        sys.stdout.write(RUNTIME_USAGE)
        return 0
    explicit = None
    while args and (args[0] == "--runtime-path" or args[0].startswith("--runtime-path=")):
        if "=" in args[0]:
            explicit = args[0].partition("=")[2]
            args = args[1:]
        elif len(args) > 1:
            explicit, args = args[1], args[2:]
        else:
            raise E.UsageError("runtime: --runtime-path needs a value")
    command, bundle = parse_runtime_args(args)
    if bundle is not None:
        entry = hook_entry(invocation(gopts=gopts))
        patch_bundle(bundle, entry, gopts)
    runtime = real_runtime(explicit)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(runtime, [runtime] + list(args))
    except OSError as err:
        raise E.ExecError(runtime, err) from None
    return 0   # not reached
