"""`info`, `list`, `features`: what nvlaunch sees and would do.  Readable tables by
default, `--json` for scripts.  Nothing here changes the host."""
from __future__ import annotations

import json
import sys

from nvlaunch.core.argv import HELP, parse_command
from nvlaunch.host.driver import discover
from nvlaunch.host.features import features
from nvlaunch.host.gpus import enumerate_gpus
from nvlaunch.host.view import HostView
from nvlaunch.plan.build import build_plan
from nvlaunch.plan.request import Request
from nvlaunch.render.info import info_data, info_text
from nvlaunch.render.plan_text import plan_json, print_plan

USAGES = {
    "info": "usage: nvlaunch info [--json]\n  driver version, GPUs, what each capability injects\n",
    "list": "usage: nvlaunch list [--gpus SPEC] [--capabilities CAPS] [--json]\n"
            "  the exact devices, files and links a container would get (default --gpus all)\n",
    "features": "usage: nvlaunch features [--json]\n  what this host supports\n",
}


def _opts(args: list, allowed: dict, command: str) -> dict | None:
    table = {f"--{name.replace('_', '-')}": (name, takes, False) for name, takes in allowed.items()}
    parsed = parse_command(args, {**table, **HELP}, command, USAGES[command])
    return None if parsed is None else parsed[0]


def _json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_info(gopts: dict, args: list) -> int:
    opts = _opts(args, {"json": False}, "info")
    if opts is None:
        return 0
    host = HostView.from_options(gopts)
    gpus = enumerate_gpus(host)
    data = info_data(host, discover(host), gpus)
    if opts.get("json"):
        _json(data)
    else:
        sys.stdout.write(info_text(data, gpus))
    return 0


def cmd_list(gopts: dict, args: list) -> int:
    opts = _opts(args, {"json": False, "gpus": True, "capabilities": True}, "list")
    if opts is None:
        return 0
    plan = build_plan(Request(gpus=opts.get("gpus", "all"), capabilities=opts.get("capabilities")),
                      HostView.from_options(gopts))
    if opts.get("json"):
        _json(plan_json(plan))
    else:
        print_plan(plan, sys.stdout)
    return 0


def cmd_features(gopts: dict, args: list) -> int:
    """What this host supports: the single capability probe tests and docs refer to."""
    opts = _opts(args, {"json": False}, "features")
    if opts is None:
        return 0
    data = features()
    if opts.get("json"):
        _json(data)
    else:
        for k, v in data.items():
            sys.stdout.write(f"{k}: {v}\n")
    return 0
