"""The command line: one small function per subcommand, all errors as one line.

Parsing is a table per command (no argparse: it costs more to import than a whole
`run` takes to set up a container).  Every command converges on the same library
calls; failures are NvlaunchError, printed as `nvlaunch: error: ...` with its exit code.
"""
from __future__ import annotations

import os
import sys
import time

_T_MAIN = time.monotonic_ns()

USAGE = """usage: nvlaunch [--driver-root DIR] [--dev-root DIR] [--proc-root DIR] [--debug] COMMAND ...

commands:
  run [OPTIONS] ROOTFS CMD [ARG...]   start CMD in a new container on ROOTFS
  hook [STAGE]                        OCI hook (prestart, create-runtime, create-container)
  lxc-hook                            LXC mount hook
  info [--json]                       driver version, GPUs, what each capability injects
  list [--gpus SPEC] [--capabilities CAPS] [--json]
  cdi generate [--output FILE] [--format json|yaml]
  setup {runc|podman|crio|docker|lxc|containerd} [--dry-run]
  runtime [RUNTIME-ARGS...]           OCI runtime shim: adds the hook, execs the real runtime
  features [--json]                   what this host supports
"""

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

# option -> (key, takes a value, repeatable)
GLOBAL_OPTS = {"--driver-root": ("driver_root", True, False), "--dev-root": ("dev_root", True, False),
               "--proc-root": ("proc_root", True, False), "--debug": ("debug", False, False)}
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


def parse_opts(args: list, table: dict, command: str, stop_at_positional: bool = True):
    """Options from `table` until the first positional (or `--`); returns (opts, rest)."""
    from nvlaunch.core.errors import UsageError
    opts: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                break
            opts.setdefault("_positional", []).append(arg)
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in table:
            raise UsageError(f"{command}: unknown option {name}")
        key, takes_value, repeat = table[name]
        if takes_value:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{command}: option {name} needs a value")
                value = args[i]
        elif eq:
            raise UsageError(f"{command}: option {name} takes no value")
        else:
            value = True
        if repeat:
            opts.setdefault(key, []).append(value)
        else:
            opts[key] = value
        i += 1
    return opts, args[i:]


def parse_command(args: list, table: dict, command: str, usage: str | None = None,
                  max_positional: int = 0):
    """parse_opts plus the conventions every subcommand shares: `--help` (when the table
    has it) prints `usage` and gives None; more than `max_positional` arguments left over
    is an error naming the first extra one.  Returns (opts, positionals)."""
    from nvlaunch.core.errors import UsageError
    opts, rest = parse_opts(args, table, command)
    if opts.get("help"):
        sys.stdout.write(usage or USAGE)
        return None
    if len(rest) > max_positional:
        raise UsageError(f"{command}: unexpected argument {rest[max_positional]!r}")
    return opts, rest


def _int_opt(opts: dict, key: str, flag: str) -> int:
    from nvlaunch.core.errors import UsageError
    val = opts.get(key, "0")
    if not (str(val).isascii() and str(val).isdigit()):
        raise UsageError(f"{flag} {val}: not a non-negative integer")
    if int(val) >= 4294967295:   # (uid_t)-1 means "no change" to the kernel, not an id
        raise UsageError(f"{flag} {val}: not a valid id (0..4294967294)")
    return int(val)


def _host(gopts: dict):
    from nvlaunch.host.view import HostView
    return HostView.from_env(gopts.get("driver_root"), gopts.get("dev_root"), gopts.get("proc_root"))


def cmd_run(gopts: dict, args: list) -> int:
    from nvlaunch.core.errors import UsageError
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
    import stat
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"rootfs {rest[0]}: not a directory")
    env = []
    for item in opts.get("env", []):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--env {item}: expected KEY=VALUE")
        env.append((key, value))
    from nvlaunch.exec.launch import RunConfig, UserBind
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
    uid, gid = _int_opt(opts, "uid", "--uid"), _int_opt(opts, "gid", "--gid")
    timings = None
    if opts.get("timings") or os.environ.get("NVLAUNCH_TIMINGS") == "1":
        from nvlaunch.core.timings import Timings
        timings = Timings(_T_MAIN)
    plan, cache_key = _run_plan(gopts, opts, dict(env), rootfs)
    if opts.get("dry_run"):
        from nvlaunch.frontends.show import print_plan
        print_plan(plan, sys.stdout)
        return 0
    cfg = RunConfig(rootfs=rootfs, argv=argv, env=tuple(env), binds=tuple(binds), workdir=workdir,
                    hostname=opts.get("hostname"), net=net, uid=uid, gid=gid,
                    readonly=bool(opts.get("readonly")), plan=plan, debug=bool(gopts.get("debug")))
    from nvlaunch.core.errors import EXIT_SETUP, NvlaunchError
    from nvlaunch.exec.launch import run
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
    the driver and GPUs are unchanged (plancache.py)."""
    from nvlaunch.plan.records import Plan
    if opts.get("no_gpu"):
        return Plan(), None
    spec = opts.get("gpus", env.get("NVIDIA_VISIBLE_DEVICES"))
    if spec is None or spec.strip() in ("", "void"):
        return Plan(), None
    from nvlaunch.plan import cache as plancache
    from nvlaunch.plan.request import Request
    caps = opts.get("capabilities", env.get("NVIDIA_DRIVER_CAPABILITIES"))
    req = Request(gpus=spec, capabilities=caps,
                  env=tuple(sorted((k, v) for k, v in env.items() if k.startswith("NVIDIA_"))))
    return plancache.plan_for_rootfs(req, _host(gopts), rootfs)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv[:argv.index("run")] if "run" in argv else "--debug" in argv
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:           # `nvlaunch list | head`: the reader left; say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the one place errors become a line
        from nvlaunch.core.errors import NvlaunchError, EXIT_SETUP
        if debug:
            import traceback
            traceback.print_exc()
        if isinstance(exc, NvlaunchError):
            msg, code = str(exc), exc.exit_code
        elif isinstance(exc, OSError):
            msg = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
            code = EXIT_SETUP
        else:
            msg, code = f"internal error: {type(exc).__name__}: {exc}", EXIT_SETUP
        sys.stderr.write(f"nvlaunch: error: {msg}\n")
        return code


def _dispatch(argv: list) -> int:
    from nvlaunch.core.errors import UsageError
    gopts, rest = parse_opts(argv, {**GLOBAL_OPTS, "--help": ("help", False, False),
                                    "-h": ("help", False, False)}, "nvlaunch")
    if gopts.get("help") or not rest:
        sys.stdout.write(USAGE)
        return 0 if gopts.get("help") else 125
    command, args = rest[0], rest[1:]
    handler = COMMANDS.get(command)
    if handler is None:
        raise UsageError(f"unknown command {command!r} (see `nvlaunch --help`)")
    return handler(gopts, args)


def _lazy(module: str, func: str):
    def call(gopts, args):
        import importlib
        return getattr(importlib.import_module(module), func)(gopts, args)
    return call


COMMANDS = {
    "run": cmd_run,
    "hook": _lazy("nvlaunch.frontends.oci_hook", "cmd_hook"),
    "lxc-hook": _lazy("nvlaunch.frontends.lxc_hook", "cmd_lxc_hook"),
    "info": _lazy("nvlaunch.frontends.show", "cmd_info"),
    "list": _lazy("nvlaunch.frontends.show", "cmd_list"),
    "features": _lazy("nvlaunch.frontends.show", "cmd_features"),
    "cdi": _lazy("nvlaunch.frontends.cdi", "cmd_cdi"),
    "setup": _lazy("nvlaunch.setup.command", "cmd_setup"),
    "runtime": _lazy("nvlaunch.frontends.runtime_shim", "cmd_runtime"),
    "ldcache": _lazy("nvlaunch.frontends.ldcache_hook", "cmd_ldcache"),
}

if __name__ == "__main__":
    sys.exit(main())
