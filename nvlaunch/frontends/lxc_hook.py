"""`nvlaunch lxc-hook` (an lxc.hook.mount) and `nvlaunch setup lxc NAME`.

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
import shlex
import shutil
import sys

from nvlaunch.core.errors import NvlaunchError, UsageError
from nvlaunch.plan.records import Plan

LXC_PATH = "/var/lib/lxc"
BLOCK_BEGIN = "# >>> nvlaunch: GPU access (written by `nvlaunch setup lxc`; replaced on each run) >>>"
BLOCK_END = "# <<< nvlaunch <<<"
DEFAULT_GPUS = "all"
DEFAULT_CAPABILITIES = "compute,utility"

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


# ------------------------------------------------------------------ the hook

def _hook_type(args: list, env) -> tuple[str | None, str | None]:
    """(section, type) from LXC_HOOK_SECTION/LXC_HOOK_TYPE (version 1) or argv (version 0:
    "NAME SECTION TYPE")."""
    if env.get("LXC_HOOK_TYPE"):
        return env.get("LXC_HOOK_SECTION"), env.get("LXC_HOOK_TYPE")
    if len(args) >= 3:
        return args[1], args[2]
    return None, None


def _proc_mounted(rootfs: str) -> bool:
    """Whether the container's /proc is a procfs already (lxc.mount.auto = proc:...)."""
    from nvlaunch.kernel.real import REAL
    from nvlaunch.exec.inroot import open_in_root
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(open_in_root(REAL, rootfd, "/proc/self", os.O_PATH | os.O_NOFOLLOW))
        return True
    except OSError:
        return False
    finally:
        os.close(rootfd)


def without_proc(plan: Plan) -> Plan:
    """The plan less its /proc/driver/nvidia view."""
    keep = tuple(e for e in plan.entries if not getattr(e, "dst", "").startswith("/proc/"))
    return Plan(entries=keep, devices=plan.devices, env=plan.env, libdir=plan.libdir,
                ldcache=plan.ldcache, notes=plan.notes)


def cmd_lxc_hook(gopts: dict, args: list, environ=None) -> int:
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
    if not rootfs or not rootfs.startswith("/") or not os.path.isdir(rootfs):
        raise UsageError(f"lxc-hook: LXC_ROOTFS_MOUNT={rootfs!r} is not a directory")
    from nvlaunch.plan.request import Request
    req = Request.from_env(dict(env))
    if req.void:
        return 0
    from nvlaunch.cli.main import _host
    from nvlaunch.exec.inject import inject
    from nvlaunch.plan.cache import plan_for_rootfs
    plan = plan_for_rootfs(req, _host(gopts), rootfs)[0]
    notes = []
    if not _proc_mounted(rootfs):
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


# ------------------------------------------------------------------ setup lxc

def hook_command(gopts: dict | None, hook_path: str | None = None) -> str:
    """The shell command line for lxc.hook.mount (LXC runs it with /bin/sh -c)."""
    from nvlaunch.frontends.ldcache_hook import hook_invocation
    path, argv, env = hook_invocation(hook_path)
    words: list[str] = []
    extra_env = [e for e in env if e.startswith("PYTHONPATH=")]
    if extra_env:         # `python -m nvlaunch` from a source tree (see hook_invocation)
        words += [shutil.which("env") or "/usr/bin/env"] + extra_env
    words += [path] + argv[1:]
    host = _setup_host(gopts)
    for flag, value in (("--driver-root", host.driver_root), ("--dev-root", host.dev_root),
                        ("--proc-root", host.proc_root)):
        if value != "/":
            words += [flag, value]
    words.append("lxc-hook")
    return shlex.join(words)


def _setup_host(gopts):
    from nvlaunch.host.view import HostView
    g = gopts or {}
    return HostView.from_env(g.get("driver_root"), g.get("dev_root"), g.get("proc_root"))


def _has_other_hooks(text: str) -> bool:
    for line in _strip_block(text).splitlines():
        key = line.split("=", 1)[0].strip()
        if key.startswith("lxc.hook.") and key != "lxc.hook.version":
            return True
    return False


def config_block(gopts: dict | None, gpus: str = DEFAULT_GPUS,
                 capabilities: str = DEFAULT_CAPABILITIES, hook_path: str | None = None,
                 hook_version: int = 1) -> str:
    """nvlaunch's marked block for an LXC config."""
    from nvlaunch.plan.build import build_plan
    from nvlaunch.plan.devices import rules_for_nodes
    from nvlaunch.plan.request import Request
    for name, value in (("--gpus", gpus), ("--capabilities", capabilities)):
        if "\n" in value or "=" in value:
            raise UsageError(f"{name} {value!r}: not a valid value")
    plan = build_plan(Request(gpus=gpus, capabilities=capabilities), _setup_host(gopts))
    lines = [BLOCK_BEGIN]
    if hook_version == 1:
        lines.append("lxc.hook.version = 1")
    lines += [f"lxc.hook.mount = {hook_command(gopts, hook_path)}",
              f"lxc.environment = NVIDIA_VISIBLE_DEVICES={gpus}",
              f"lxc.environment = NVIDIA_DRIVER_CAPABILITIES={capabilities}"]
    for rule in rules_for_nodes(plan.devices):
        lines.append(f"lxc.cgroup.devices.allow = {rule.to_v1_line()}")
        lines.append(f"lxc.cgroup2.devices.allow = {rule.to_v1_line()}")
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def _strip_block(text: str) -> str:
    """`text` without nvlaunch's block (all copies of it)."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BLOCK_BEGIN:
            inside = True
            continue
        if inside:
            if line.rstrip("\n") == BLOCK_END:
                inside = False
            continue
        out.append(line)
    if inside:
        raise NvlaunchError(f"unterminated nvlaunch block in the config (no {BLOCK_END!r} line)")
    return "".join(out)


def updated_config(text: str, block: str) -> str:
    """The config with nvlaunch's block replaced in place, or appended if absent."""
    if BLOCK_BEGIN + "\n" not in text and not text.endswith(BLOCK_BEGIN):
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    _strip_block(text)       # checks the block is terminated
    out, inside, done = [], False, False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BLOCK_BEGIN:
            inside = True
            if not done:
                out.append(block)
                done = True
            continue
        if inside:
            inside = line.rstrip("\n") != BLOCK_END
            continue
        out.append(line)
    return "".join(out)


def setup_lxc(args: list, dry_run: bool, gopts: dict | None = None) -> int:
    """`nvlaunch setup lxc NAME [--config PATH] [--lxcpath DIR] [--gpus SPEC]
    [--capabilities CAPS] [--hook-path PATH] [--dry-run]`."""
    from nvlaunch.cli.main import parse_opts
    opts, rest = parse_opts(list(args), SETUP_OPTS, "setup lxc", stop_at_positional=False)
    if opts.get("help"):
        sys.stdout.write(SETUP_USAGE)
        return 0
    names = opts.get("_positional", []) + list(rest)
    dry_run = dry_run or bool(opts.get("dry_run"))
    if len(names) > 1:
        raise UsageError(f"setup lxc: one container name, not {' '.join(names)!r}")
    if not names and not opts.get("config"):
        raise UsageError("setup lxc: need the container NAME (or --config PATH)")
    config = opts.get("config") or os.path.join(opts.get("lxcpath", LXC_PATH), names[0], "config")
    try:
        with open(config, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if not dry_run:
            raise UsageError(f"setup lxc: {config}: no such file (create the container first, "
                             "or pass --config)") from None
        text = ""
    version = 0 if _has_other_hooks(text) else 1
    block = config_block(gopts, opts.get("gpus", DEFAULT_GPUS),
                         opts.get("capabilities", DEFAULT_CAPABILITIES), opts.get("hook_path"),
                         hook_version=version)
    if dry_run:
        sys.stdout.write(block)
        return 0
    from nvlaunch.frontends.cdi import write_atomic
    mode = os.stat(config).st_mode & 0o7777
    write_atomic(config, updated_config(text, block), mode)
    sys.stdout.write(f"updated {config}\n")
    if version == 0:
        sys.stdout.write("note: the config has other hooks, so lxc.hook.version is left as it "
                         "is; nvlaunch lxc-hook reads its type from argv then\n")
    return 0
