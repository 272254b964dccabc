"""`nvlaunch hook [STAGE]`: the OCI hook, one for every runtime (runc, crun, podman, CRI-O,
containerd, docker through `nvlaunch runtime`).

The runtime runs the hook with the container's state JSON on stdin (runtime-spec
runtime.md "State": id, pid, bundle, annotations; crun adds `root`, the rootfs path).
What the hook does, in this order:

1. Read the state, then `<bundle>/config.json`.  The rootfs is crun's `root` if given, else
   config `root.path` (relative to the bundle unless absolute).
2. Select from config `process.env` ONLY these variables: NVIDIA_VISIBLE_DEVICES,
   NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, NVIDIA_DISABLE_REQUIRE and
   NVIDIA_IMEX_CHANNELS (a variable given twice: the last one wins, as in NVIDIA's hook).
   Unset, empty or "void" NVIDIA_VISIBLE_DEVICES: exit 0 having done nothing.  Nothing
   else of the container (its other variables, LD_PRELOAD, PATH, NVLAUNCH_*, annotations,
   mounts) can influence the hook: the host roots and the switches come from the hook's
   own options and environment, i.e. from whoever installed the hook.
3. Build the plan (plan.cache) while still in the host's namespaces.
4. Device cgroup (exec.cgroup.allow_plan_devices): only as root in the initial user namespace
   and unless NVLAUNCH_NO_CGROUPS=1 / --no-cgroups: allow "c MAJ:MIN rw" for each device
   node of the plan in the container's device cgroup (v1 devices.allow, or v2 eBPF).
   prestart/create-runtime find it from the state's pid (a host pid, from the runtime's
   pid namespace); create-container runs inside the container's cgroup and uses
   /proc/self.  A rootless runtime gets no cgroup writes (said once in debug output).
5. Inject: prestart and create-runtime run in the runtime's namespaces (exec.enter).
   Where the container has a user namespace of its own, a forked child joins it (and
   becomes its root there, as nsenter(1) does, see become_root), then its mount
   namespace, applies the plan there (exec.inject's in-root executor; on failure the
   mounts made so far are detached and the files created for them removed) and reports
   back over a pipe.  Where it has none (a root runtime), this process visits the mount
   namespace, injects and comes back, without a fork.  Either way the cgroup undo and
   the error line happen in the host's namespaces.  create-container already runs in
   the container's mount namespace (before pivot_root): inject directly.  If injection
   fails, the cgroup rules added in step 4 are removed again.

Every failure is one `nvlaunch: error: hook STAGE: container ID: ...` line on stderr and
a non-zero exit, so the runtime aborts the container.  Debug lines go to stderr only with
--debug or NVLAUNCH_DEBUG=1, and are appended to NVLAUNCH_DEBUG_FILE when that is set.

What the plan's `env` (NVIDIA_VISIBLE_DEVICES as UUIDs) asks for is NOT applied: at hook
time the runtime has already read process.env.  `nvlaunch runtime` rewrites it to UUIDs in
config.json before the runtime starts (runtime_shim.uuid_env); under docker's `--gpus`
with runc the container keeps docker's value.
"""
from __future__ import annotations

import os
import sys

from nvlaunch.core import errors as E
from nvlaunch.core.argv import parse_command
from nvlaunch.core.log import checkpoint, log, truthy
from nvlaunch.oci.hooks import check_environment, guard_hook
from nvlaunch.oci.state import (MAX_STATE, container_rootfs, load_config, read_state, selection_env,
                                state_pid)
from nvlaunch.plan.request import Request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.plan.records import Plan

# Hook stage argument -> config.json hooks key.  poststart/poststop are accepted and do
# nothing, so a hooks.d file or a config listing the hook for them does not break.
STAGES = {
    "prestart": "prestart",
    "create-runtime": "createRuntime", "createRuntime": "createRuntime",
    "create-container": "createContainer", "createContainer": "createContainer",
}
NOOP_STAGES = ("poststart", "poststop", "start-container", "startContainer")
# Stages that run in the runtime's namespaces, not yet the container's.
RUNTIME_NS_STAGES = ("prestart", "createRuntime")
ENV_NO_CGROUPS = "NVLAUNCH_NO_CGROUPS"

HOOK_USAGE = """usage: nvlaunch hook [--no-cgroups] [STAGE]
  STAGE: prestart (default), create-runtime, create-container; the OCI state JSON on stdin.
  --no-cgroups   add no device cgroup rules (also NVLAUNCH_NO_CGROUPS=1)
"""
HOOK_OPTS = {"--no-cgroups": ("no_cgroups", False, False), "--help": ("help", False, False),
             "-h": ("help", False, False)}


def cmd_hook(gopts: dict, args: list) -> int:
    parsed = parse_command(args, HOOK_OPTS, "hook", HOOK_USAGE, max_positional=1)
    if parsed is None:
        return 0
    opts, rest = parsed
    stage_arg = rest[0] if rest else "prestart"
    if stage_arg in NOOP_STAGES:
        return 0
    stage = STAGES.get(stage_arg)
    if stage is None:
        raise E.UsageError(f"hook: unknown stage {stage_arg!r} "
                           "(expected prestart, create-runtime or create-container)")
    log.configure(bool(gopts.get("debug")), "hook")
    no_cgroups = bool(opts.get("no_cgroups")) or truthy(os.environ.get(ENV_NO_CGROUPS))
    guard_hook(os.environ)
    state = read_state(sys.stdin.buffer.read(MAX_STATE + 1))
    try:
        return run_hook(gopts, stage, state, no_cgroups)
    except (E.NvlaunchError, OSError) as err:
        code, msg = E.describe(err)
        failure = E.NvlaunchError(f"hook {stage_arg}: container {_shown_id(state.get('id'))}: {msg}",
                                  errno=E.errno_of(err))
        failure.exit_code = code
        # the runtime may not show our stderr (crun drops it by default): the file too
        log(f"error: {failure}", file_only=True)
        raise failure from err


def _shown_id(cid: object) -> str:
    """The container id as the error line names it: as it is when it is a plain short
    string, else quoted (a list, a huge or unprintable id from a hostile state)."""
    if isinstance(cid, str) and cid and len(cid) <= 128 and cid.isprintable():
        return cid
    return "?" if not cid else E.quote(cid, 64)


def run_hook(gopts: dict, stage: str, state: dict, no_cgroups: bool = False) -> int:
    """The hook for one container; `stage` is a config.json hooks key."""
    config = load_config(state["bundle"])
    check_environment(os.environ, config)
    env = selection_env(config)
    req = Request.from_env(env)
    log(f"stage {stage}, container {state.get('id')}, pid {state.get('pid')}, "
        f"NVIDIA_VISIBLE_DEVICES={env.get('NVIDIA_VISIBLE_DEVICES')!r}")
    if req.void:
        log("NVIDIA_VISIBLE_DEVICES unset, empty or void: nothing to do")
        return 0
    rootfs = container_rootfs(state, config)
    if not os.path.isdir(rootfs):
        raise E.UsageError(f"rootfs {rootfs}: not a directory")
    pid = state_pid(state) if stage in RUNTIME_NS_STAGES else None   # bad input first
    # Imported only now: a container that asks for no GPU (every container, where the
    # hook is installed for all of them through hooks.d) never loads the plan modules.
    from nvlaunch.host.view import HostView
    from nvlaunch.plan.cache import plan_for_rootfs
    plan, cache_key = plan_for_rootfs(req, HostView.from_options(gopts), rootfs)
    try:
        return _apply(plan, stage, rootfs, pid, no_cgroups)
    except BaseException:
        if cache_key:                       # never trust a plan that failed
            from nvlaunch.plan import cache as plancache
            plancache.drop(cache_key)
        raise


def _apply(plan: Plan, stage: str, rootfs: str, pid: int | None, no_cgroups: bool) -> int:
    """Steps 4 and 5 of the module docstring: cgroup rules, then the injection."""
    log(f"plan: {len(plan.entries)} entries, {len(plan.devices)} device nodes, "
        f"libdir {plan.libdir}, rootfs {rootfs}")
    checkpoint("hook-plan")
    if plan.empty:
        return 0
    # Imported here: a hook that has nothing to do never loads the executors.
    from nvlaunch.exec.cgroup import allow_plan_devices
    ns = None
    if pid is not None:
        from nvlaunch.kernel.namespaces import open_namespaces
        ns = open_namespaces(pid)   # before any change: a bad pid fails first
    undo = None
    try:
        undo = allow_plan_devices(plan, pid if pid is not None else "self", no_cgroups)
        checkpoint("hook-cgroup")
        if ns is not None:
            from nvlaunch.exec.enter import inject_in_namespaces
            created = inject_in_namespaces(plan, rootfs, ns)
        else:
            from nvlaunch.exec.inject import inject
            created = len(inject(plan, rootfs).created)
        log(f"injected; {created} new paths in the rootfs")
    except BaseException:
        if undo is not None:
            try:
                undo.undo()
                log("cgroup rules removed again")
            except E.NvlaunchError as err:
                log(f"cgroup undo failed: {err}")
        raise
    finally:
        if ns is not None:
            ns.close()
    if undo is not None:
        undo.close()
    return 0
