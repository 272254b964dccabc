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
from nvlaunch.core.errors import EXIT_SETUP, UsageError, describe, quote  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

USAGE = """usage: nvlaunch [--driver-root DIR] [--dev-root DIR] [--proc-root DIR] [--debug] COMMAND ...
       nvlaunch --version

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
  pull IMAGE                          fetch and unpack an image into the image cache
  images [--json]                     the cached images
  rmi IMAGE                           remove an image from the cache
"""

# option -> (key, takes a value, repeatable)
GLOBAL_OPTS = {"--driver-root": ("driver_root", True, False), "--dev-root": ("dev_root", True, False),
               "--proc-root": ("proc_root", True, False), "--debug": ("debug", False, False)}

VERSION = {"--version": ("version", False, False)}
# Commands for which the host roots only describe the host a hook will run on (written
# into its configuration), not a tree read now: a root that does not exist here is fine.
ROOTS_NOT_READ = ("setup",)

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
    "pull": ("nvlaunch.frontends.images", "cmd_pull"),
    "images": ("nvlaunch.frontends.images", "cmd_images"),
    "rmi": ("nvlaunch.frontends.images", "cmd_rmi"),
}


def entry() -> NoReturn:
    """The program (bin/nvlaunch, `python -m nvlaunch`, a hook's package command): main(),
    then out through os._exit once the output is flushed.  Nothing is left to clean up,
    and the interpreter's teardown of every module would cost a few milliseconds of
    every container start."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
        try:
            code, msg = describe(exc)
        except Exception:  # noqa: BLE001 - an exception whose str() fails: still one line
            code, msg = EXIT_SETUP, f"internal error: {type(exc).__name__}"
        error_line(msg)
        return code


def error_line(msg: str) -> None:
    """`nvlaunch: error: MSG` on stderr, whatever MSG holds: written as UTF-8 bytes with
    anything unencodable (a lone surrogate) backslash-escaped, so printing never fails."""
    line = f"nvlaunch: error: {msg}\n".encode("utf-8", "backslashreplace")
    try:
        sys.stderr.flush()
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
    except (AttributeError, ValueError):     # a stderr without a buffer (replaced, closed)
        sys.stderr.write(line.decode("utf-8"))


def _dispatch(argv: list) -> int:
    gopts, rest = parse_opts(argv, {**GLOBAL_OPTS, **HELP, **VERSION}, "")
    if gopts.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if gopts.get("version"):
        from nvlaunch import __version__
        sys.stdout.write(f"nvlaunch {__version__}\n")
        return 0
    if not rest:
        raise UsageError("no command given (see `nvlaunch --help`)")
    command, args = rest[0], rest[1:]
    entry = COMMANDS.get(command)
    if entry is None:
        raise UsageError(f"unknown command {quote(command)} (see `nvlaunch --help`)")
    if command not in ROOTS_NOT_READ:
        _check_roots(gopts)
    gopts["t_main"] = _T_MAIN
    # __import__ rather than importlib.import_module: the importlib package imports
    # `warnings` (~0.8 ms of every command, hooks included).
    __import__(entry[0])
    return getattr(sys.modules[entry[0]], entry[1])(gopts, args)


def _check_roots(gopts: dict) -> None:
    """--driver-root / --dev-root / --proc-root, where given, must name a directory: a
    typo would otherwise read as a host without a driver."""
    for flag, (key, _, _) in GLOBAL_OPTS.items():
        if key not in gopts or not isinstance(gopts[key], str):
            continue
        value = gopts[key]
        try:
            if value and os.path.isdir(value):
                continue
            why = "not a directory" if value and os.path.lexists(value) else "no such directory"
        except ValueError:          # an embedded NUL
            why = "not a directory"
        raise UsageError(f"{flag} {quote(value)}: {why}")


if __name__ == "__main__":
    sys.exit(main())
