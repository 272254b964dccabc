"""`nvlaunch cdi generate | list`: this host's GPUs as a CDI spec (render.cdi)."""
from __future__ import annotations

import os
import sys

from nvlaunch.core.argv import parse_command
from nvlaunch.core.errors import UsageError, os_message, quote
from nvlaunch.core.files import write_atomic
from nvlaunch.host.view import HostView
from nvlaunch.oci.hooks import invocation
from nvlaunch.render.cdi import SPEC_OPTS, SPEC_MODE, device_names, render, spec_from_options

USAGE = """usage: nvlaunch cdi generate [--output FILE] [--format json|yaml] [--cdi-version V]
                             [--hook-path PATH] [--capabilities CAPS]
       nvlaunch cdi list
  --output FILE        write the spec there (atomically, mode 0644) instead of stdout
  --format json|yaml   default: from FILE's extension, else json
  --cdi-version V      cdiVersion to declare (default 0.5.0, what podman 4.3 accepts; >= 0.5.0)
  --hook-path PATH     the nvlaunch executable the createContainer hook runs
  --capabilities CAPS  driver files to bind (default all, as NVIDIA's spec)
"""


def cmd_cdi(gopts: dict, args: list) -> int:
    if not args:
        raise UsageError("cdi: need a subcommand, generate or list (see `nvlaunch cdi --help`)")
    if args[0] in ("--help", "-h", "help"):
        sys.stdout.write(USAGE)
        return 0
    sub, rest = args[0], args[1:]
    if sub not in ("generate", "list"):
        raise UsageError(f"cdi: unknown subcommand {quote(sub)} (want generate or list)")
    parsed = parse_command(rest, SPEC_OPTS, f"cdi {sub}", USAGE)
    if parsed is None:
        return 0
    opts = parsed[0]
    hook = invocation(opts.get("hook_path"), gopts)
    spec, fmt = spec_from_options(HostView.from_options(gopts), hook, opts)
    if sub == "list":
        sys.stdout.write("".join(n + "\n" for n in device_names(spec)))
    elif opts.get("output") and opts["output"] != "-":
        write_output(opts["output"], render(spec, fmt))
    else:
        sys.stdout.write(render(spec, fmt))
    return 0


def write_output(path: str, text: str) -> None:
    """The spec to --output FILE (atomically, mode 0644); a failure names FILE, not the
    temporary file beside it, and leaves nothing there."""
    if path.endswith("/") or os.path.isdir(path):
        raise UsageError(f"--output {quote(path)}: not a file name (it names a directory)")
    try:
        write_atomic(path, text, SPEC_MODE)
    except OSError as err:
        raise UsageError(f"--output {quote(path)}: {err.strerror or os_message(err)}",
                         errno=err.errno) from None
