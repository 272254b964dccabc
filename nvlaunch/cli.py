"""The command line: global options, a table of subcommands, and the one error line.

Parsing is a table per command (core.argv; no argparse: it costs more to import than a
whole `run` takes to set up a container).  Each subcommand lives in a front end
(frontends/, setup/), imported only when it runs.  Every failure ends here: an
exception becomes `nvlaunch: error: <one line>` (core.errors.describe) and its exit
code; a Python traceback only with --debug.
"""
from __future__ import annotations

import os
import sys
import time

_T_MAIN = time.monotonic_ns()

from nvlaunch.core.argv import HELP, parse_opts  # noqa: E402 - after the clock
from nvlaunch.core.errors import EXIT_SETUP, UsageError, describe  # noqa: E402

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

# option -> (key, takes a value, repeatable)
GLOBAL_OPTS = {"--driver-root": ("driver_root", True, False), "--dev-root": ("dev_root", True, False),
               "--proc-root": ("proc_root", True, False), "--debug": ("debug", False, False)}

# subcommand -> (module, function(gopts, args) -> exit code)
COMMANDS = {
    "run": ("nvlaunch.frontends.run", "cmd_run"),
    "hook": ("nvlaunch.frontends.oci_hook", "cmd_hook"),
    "lxc-hook": ("nvlaunch.frontends.lxc_hook", "cmd_lxc_hook"),
    "info": ("nvlaunch.frontends.show", "cmd_info"),
    "list": ("nvlaunch.frontends.show", "cmd_list"),
    "features": ("nvlaunch.frontends.show", "cmd_features"),
    "cdi": ("nvlaunch.frontends.cdi", "cmd_cdi"),
    "setup": ("nvlaunch.setup.command", "cmd_setup"),
    "runtime": ("nvlaunch.frontends.runtime_shim", "cmd_runtime"),
    "ldcache": ("nvlaunch.frontends.ldcache_hook", "cmd_ldcache"),
}


def main(argv: list | None = None) -> int:
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
        if debug:
            import traceback
            traceback.print_exc()
        code, msg = describe(exc)
        sys.stderr.write(f"nvlaunch: error: {msg}\n")
        return code


def _dispatch(argv: list) -> int:
    gopts, rest = parse_opts(argv, {**GLOBAL_OPTS, **HELP}, "nvlaunch")
    if gopts.get("help") or not rest:
        sys.stdout.write(USAGE)
        return 0 if gopts.get("help") else EXIT_SETUP
    command, args = rest[0], rest[1:]
    entry = COMMANDS.get(command)
    if entry is None:
        raise UsageError(f"unknown command {command!r} (see `nvlaunch --help`)")
    import importlib
    gopts["t_main"] = _T_MAIN
    return getattr(importlib.import_module(entry[0]), entry[1])(gopts, args)


if __name__ == "__main__":
    sys.exit(main())
