"""`nvlaunch run`: options -> a RunConfig (exec.launch) with the GPU plan (plan.cache)."""
from __future__ import annotations

import os
import stat
import sys
import time

from nvlaunch.core.argv import int_opt, parse_opts
from nvlaunch.core.errors import EXIT_SETUP, NvlaunchError, UsageError
from nvlaunch.exec.launch import run
from nvlaunch.exec.runroot import RunConfig, UserBind
from nvlaunch.plan.records import Plan

# Imported where used (timings, --dry-run, a GPU request): each module on the way to a
# container costs about 0.1-0.3 ms, and `run --no-gpu` needs none of these.

RUN_USAGE = """usage: nvlaunch run [OPTIONS] ROOTFS CMD [ARG...]
  --gpus SPEC            all, none, void, indices, UUIDs (or unique prefixes), PCI bus ids, MIG ids
  --capabilities CAPS    compute,utility,video,graphics,display,compat32,ngx or all
  --no-gpu               inject nothing GPU-related
  --env K=V              set a variable in the container (repeatable)
  --bind SRC:DST[:ro]    bind a host path into the container (repeatable)
  --workdir DIR          working directory inside (default /)
  --hostname NAME        host name inside
  --net host|none        network namespace: the host's (default) or a new one with lo up
  --uid N, --gid N       ids inside the container (default 0)
  --readonly             the rootfs is read-only inside
  --dry-run              print the injection plan and exit
  --timings              print per-phase timings on stderr
"""

RUN_OPTS = {
    "--gpus": ("gpus", True, False), "--capabilities": ("capabilities", True, False),
    "--env": ("env", True, True), "-e": ("env", True, True), "--bind": ("bind", True, True),
    "--workdir": ("workdir", True, False), "-w": ("workdir", True, False),
    "--hostname": ("hostname", True, False), "--net": ("net", True, False),
    "--uid": ("uid", True, False), "--gid": ("gid", True, False),
    "--readonly": ("readonly", False, False), "--no-gpu": ("no_gpu", False, False),
    "--dry-run": ("dry_run", False, False), "--timings": ("timings", False, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}


def cmd_run(gopts: dict, args: list) -> int:
    opts, rest = parse_opts(args, RUN_OPTS, "run")
    if opts.get("help"):
        sys.stdout.write(RUN_USAGE)
        return 0
    if len(rest) < 2:
        raise UsageError("run: need ROOTFS and CMD (see `nvlaunch run --help`)")
    rootfs, argv = os.path.abspath(rest[0]), tuple(rest[1:])
    try:
        st = os.stat(rootfs)
    except OSError as err:
        raise UsageError(f"rootfs {rest[0]}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"rootfs {rest[0]}: not a directory")
    env = []
    for item in opts.get("env", []):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--env {item}: expected KEY=VALUE")
        env.append((key, value))
    binds = []
    for item in opts.get("bind", []):
        parts = item.split(":")
        ro = len(parts) == 3 and parts[2] in ("ro", "rw") and parts[2] == "ro"
        if len(parts) == 3 and parts[2] not in ("ro", "rw") or len(parts) not in (2, 3) \
                or not parts[0] or not parts[1].startswith("/"):
            raise UsageError(f"--bind {item}: expected SRC:DST[:ro] with an absolute DST")
        binds.append(UserBind(os.path.abspath(parts[0]), os.path.normpath(parts[1]), ro))
    net = opts.get("net", "host")
    if net not in ("host", "none"):
        raise UsageError(f"--net {net}: expected host or none")
    workdir = opts.get("workdir", "/")
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir {workdir}: must be an absolute path")
    uid, gid = int_opt(opts, "uid", "--uid"), int_opt(opts, "gid", "--gid")
    timings = None
    if opts.get("timings") or os.environ.get("NVLAUNCH_TIMINGS") == "1":
        from nvlaunch.core.timings import Timings
        timings = Timings(gopts.get("t_main") or time.monotonic_ns())
    plan, cache_key = _run_plan(gopts, opts, dict(env), rootfs)
    if opts.get("dry_run"):
        from nvlaunch.render.plan_text import print_plan
        print_plan(plan, sys.stdout)
        return 0
    cfg = RunConfig(rootfs=rootfs, argv=argv, env=tuple(env), binds=tuple(binds), workdir=workdir,
                    hostname=opts.get("hostname"), net=net, uid=uid, gid=gid,
                    readonly=bool(opts.get("readonly")), plan=plan, debug=bool(gopts.get("debug")))
    try:
        return run(cfg, timings=timings)
    except NvlaunchError as err:
        if cache_key and err.exit_code == EXIT_SETUP:   # never trust a plan that failed
            from nvlaunch.plan import cache as plancache
            plancache.drop(cache_key)
        raise


def _run_plan(gopts: dict, opts: dict, env: dict, rootfs: str):
    """The GPU part of `run`: --gpus wins, else NVIDIA_VISIBLE_DEVICES from --env.
    Returns (plan, cache key or None); a plan cached by an earlier launch is reused while
    what it was built from is unchanged (plan.cache)."""
    if opts.get("no_gpu"):
        return Plan(), None
    spec = opts.get("gpus", env.get("NVIDIA_VISIBLE_DEVICES"))
    if spec is None or spec.strip() in ("", "void"):
        return Plan(), None
    from nvlaunch.host.view import HostView
    from nvlaunch.plan import cache as plancache
    from nvlaunch.plan.request import Request
    caps = opts.get("capabilities", env.get("NVIDIA_DRIVER_CAPABILITIES"))
    req = Request(gpus=spec, capabilities=caps,
                  env=tuple(sorted((k, v) for k, v in env.items() if k.startswith("NVIDIA_"))))
    return plancache.plan_for_rootfs(req, HostView.from_options(gopts), rootfs)
