"""`nvlaunch setup docker [--config FILE] [--bin-dir DIR] [--default-runtime] [--force]`.

Two things, so that docker works as its users type it:

1. runtime "nvlaunch" merged into daemon.json (FILE, default /etc/docker/daemon.json):
   {"path": NVLAUNCH, "runtimeArgs": [..., "runtime"]}.  dockerd wraps a runtime with
   runtimeArgs in a script `PATH ARGS $@`, so runc's arguments follow "runtime"
   (frontends.runtime_shim); `--default-runtime` also sets "default-runtime".  dockerd
   gives the runtime its own environment, so the host roots and switches given to setup
   must be in dockerd's environment (said on output).
2. DIR/nvidia-container-runtime-hook (DIR default /usr/local/bin): dockerd enables
   `docker run --gpus` and compose's GPU reservations (driver nvidia) when it finds an
   executable of that name on its PATH, and adds it to every GPU container as a prestart
   hook, `nvidia-container-runtime-hook prestart`, with dockerd's own environment.  The
   file is a shell script that runs `nvlaunch hook prestart` under `env -i` with the
   environment of oci.hooks.invocation() (PATH, LANG, the NVLAUNCH_* settings given to
   setup), never dockerd's.  A different file of that name (NVIDIA's hook) is never
   overwritten without --force.
"""
from __future__ import annotations

import json
import os
import shlex

from nvlaunch.core import errors as E
from nvlaunch.core.files import load_json_object
from nvlaunch.oci.hooks import Invocation
from nvlaunch.setup.common import RUNTIME_NAME, SETUP_OPTS, Writer, executable, hook, settings

DEFAULT_CONFIG = "/etc/docker/daemon.json"
DEFAULT_BIN_DIR = "/usr/local/bin"
HOOK_NAME = "nvidia-container-runtime-hook"
HOOK_MARK = "# written by `nvlaunch setup docker`"
DOCKER_OPTS = {**SETUP_OPTS, "--bin-dir": ("bin_dir", True, False),
               "--default-runtime": ("default_runtime", False, False),
               "--force": ("force", False, False)}
DOCKER_USAGE = ("usage: nvlaunch setup docker [--config FILE] [--bin-dir DIR] [--default-runtime] "
                "[--dry-run] [--force] [--hook-path PATH] [--runtime-name NAME] [--no-cgroups]\n")


def docker_merge(existing: dict, name: str, path: str, args: list | None = None,
                 default: bool = False) -> dict:
    """daemon.json with runtimes[name] set (and default-runtime); every other key kept."""
    merged = dict(existing)
    runtimes = merged.get("runtimes")
    if runtimes is None:
        runtimes = {}
    if not isinstance(runtimes, dict):
        raise E.UsageError("daemon.json: \"runtimes\" is not an object")
    runtimes = dict(runtimes)
    runtimes[name] = {"path": path, "runtimeArgs": list(args or []) + ["runtime"]}
    merged["runtimes"] = runtimes
    if default:
        merged["default-runtime"] = name
    return merged


def hook_script(inv: Invocation) -> str:
    """The nvidia-container-runtime-hook that dockerd runs: `nvlaunch hook` with an
    environment of its own (env -i: dockerd's variables, LD_PRELOAD among them, never
    reach it)."""
    words = ["/usr/bin/env", "-i"] + list(inv.env) + [inv.path] + list(inv.argv[1:]) + ["hook"]
    return ("#!/bin/sh\n"
            f"{HOOK_MARK}: dockerd runs it as `{HOOK_NAME} prestart`\n"
            "# for `docker run --gpus` and compose's GPU reservations; nvlaunch runs with this\n"
            "# environment only, never dockerd's or the container's.\n"
            f"exec {' '.join(shlex.quote(w) for w in words)} \"$@\"\n")


def _check_hook_file(path: str, text: str, force: bool) -> None:
    """Refuse to replace a different existing file (NVIDIA's hook) unless --force."""
    try:
        with open(path, "rb") as f:
            old = f.read(1 << 20)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise E.UsageError(f"setup docker: {E.quote(path)} is a directory") from None
    except OSError as err:
        raise E.UsageError(f"setup docker: {E.quote(path)}: {err.strerror or err}",
                           errno=err.errno) from None
    if old == text.encode() or HOOK_MARK.encode() in old or force:
        return
    raise E.UsageError(f"setup docker: {E.quote(path)} exists and is not nvlaunch's "
                       "(NVIDIA's hook?); not replacing it without --force")


def setup_docker(gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_CONFIG
    name = opts.get("runtime_name") or RUNTIME_NAME
    bin_dir = opts.get("bin_dir") or DEFAULT_BIN_DIR
    if "bin_dir" in opts and not opts["bin_dir"]:
        raise E.UsageError("setup docker: --bin-dir '': want a directory")
    inv = hook(gopts, opts)
    path, args = executable(inv, "setup docker")
    merged = docker_merge(load_json_object(dest, missing_ok=True), name, path, args,
                          bool(opts.get("default_runtime")))
    hook_path = os.path.join(os.path.abspath(bin_dir), HOOK_NAME)
    script = hook_script(inv)
    _check_hook_file(hook_path, script, bool(opts.get("force")))
    w.write(dest, json.dumps(merged, indent=2) + "\n")
    w.write(hook_path, script, 0o755, backup=False)
    if settings(inv):
        w.out.write("note: dockerd passes its own environment to the runtime; set "
                    + " ".join(settings(inv)) + f" in dockerd's environment for --runtime={name} "
                    f"(the {HOOK_NAME} carries them itself)\n")
    if not w.dry_run:
        w.out.write(f"dockerd must find {hook_path} on its PATH; restart dockerd, then: "
                    f"docker run --gpus all IMAGE, or docker run --runtime={name} "
                    "-e NVIDIA_VISIBLE_DEVICES=all IMAGE\n")
    return 0
