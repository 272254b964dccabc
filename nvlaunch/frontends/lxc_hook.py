"""`nvlaunch lxc-hook`: the LXC mount hook (`nvlaunch setup lxc NAME` writes its config).

The hook follows the contract of LXC's bundled hooks/nvidia (reference
rootless-launchers.md 2.5): LXC runs it as `lxc.hook.mount`, in the container's mount
(and, unprivileged, user) namespace, after the rootfs and its mounts are set up and
before pivot_root, with the rootfs at $LXC_ROOTFS_MOUNT.  The GPU selection comes from
NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES / NVIDIA_REQUIRE_* in the hook's
environment, which LXC fills from the `lxc.environment` lines; unset, empty or "void"
means not a GPU container (exit 0, nothing done).  The hook type comes from
$LXC_HOOK_TYPE (lxc.hook.version = 1) or from argv "NAME lxc mount" (version 0); any
other hook type is refused, since only the mount hook runs where it can bind into the
rootfs.

Unlike hooks/nvidia this works in privileged containers too.  It writes no cgroup
rules: a mount hook runs inside the container's cgroup, where it may not (v1) or cannot
(v2: LXC owns the BPF program) grant devices.  The rules are lxc.cgroup.devices.allow /
lxc.cgroup2.devices.allow lines in the container's config, written by `setup lxc`,
which LXC applies itself before the container starts.
"""
from __future__ import annotations

import os
import sys

from nvlaunch.core.errors import UsageError, quote
from nvlaunch.core.log import log
from nvlaunch.exec.inject import inject
from nvlaunch.host.container import proc_mounted
from nvlaunch.host.view import HostView
from nvlaunch.oci.hooks import guard_hook
from nvlaunch.plan.cache import plan_for_rootfs
from nvlaunch.plan.records import without_proc
from nvlaunch.plan.request import Request


def _hook_type(args: list, env) -> tuple[str | None, str | None]:
    """(section, type) from LXC_HOOK_SECTION/LXC_HOOK_TYPE (version 1) or argv (version 0:
    "NAME SECTION TYPE")."""
    if env.get("LXC_HOOK_TYPE"):
        return env.get("LXC_HOOK_SECTION"), env.get("LXC_HOOK_TYPE")
    if len(args) >= 3:
        return args[1], args[2]
    return None, None


LXC_HOOK_USAGE = """usage: nvlaunch lxc-hook   (as `lxc.hook.mount = nvlaunch lxc-hook`)
  LXC's mount hook: binds the GPUs that NVIDIA_VISIBLE_DEVICES (lxc.environment) asks for
  into $LXC_ROOTFS_MOUNT; `nvlaunch setup lxc NAME` writes the config lines
"""


def cmd_lxc_hook(gopts: dict, args: list, environ=None) -> int:
    if args in (["--help"], ["-h"]):
        sys.stdout.write(LXC_HOOK_USAGE)
        return 0
    env = os.environ if environ is None else environ
    section, hook_type = _hook_type(args, env)
    if hook_type is None:
        raise UsageError("lxc-hook: not run by LXC (no LXC_HOOK_TYPE and no NAME SECTION TYPE "
                         "arguments); use it as `lxc.hook.mount = nvlaunch lxc-hook`")
    if (section or "lxc") != "lxc" or hook_type != "mount":
        raise UsageError(f"lxc-hook: must run as lxc.hook.mount, not as the {section or 'lxc'} "
                         f"{hook_type} hook",
                         hint="the mount hook is the one that runs in the container's mount "
                              "namespace before pivot_root")
    rootfs = env.get("LXC_ROOTFS_MOUNT")
    if not rootfs:
        raise UsageError("lxc-hook: LXC_ROOTFS_MOUNT is not set (LXC sets it for its hooks)")
    if not rootfs.startswith("/") or not os.path.isdir(rootfs):
        raise UsageError(f"lxc-hook: LXC_ROOTFS_MOUNT={quote(rootfs)} is not an absolute path "
                         "of a directory")
    req = Request.from_env(dict(env))
    if req.void:
        return 0
    guard_hook(env, check_env=False)     # bounded in time; signals end it through its undo
    log.configure(bool(gopts.get("debug")), "lxc-hook")
    plan = plan_for_rootfs(req, HostView.from_options(gopts), rootfs)[0]
    notes = []
    if not proc_mounted(rootfs):
        # Without lxc.mount.auto = proc:..., /proc is an empty directory now and the
        # container mounts procfs over it later: a view made here would be hidden.
        plan = without_proc(plan)
        notes.append("no procfs at /proc yet: /proc/driver/nvidia view skipped")
    inject(plan, rootfs)
    name = env.get("LXC_NAME") or (args[0] if args else "?")
    sys.stdout.write(f"nvlaunch: {name}: {len(plan.devices)} device nodes, "
                     f"{sum(1 for e in plan.entries if hasattr(e, 'src')) - len(plan.devices)} "
                     f"files bound into {rootfs}" + "".join(f"; {n}" for n in notes) + "\n")
    return 0
