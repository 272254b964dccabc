"""`nvlaunch setup {runc|podman|crio|docker|containerd|lxc} [OPTIONS]`: install nvlaunch
into a container system.  Existing configuration is merged, never clobbered.

    podman      an OCI hooks.d file (1.0.0 schema), /usr/share/containers/oci/hooks.d/nvlaunch.json
    crio        the same file in /etc/containers/oci/hooks.d/nvlaunch.json
    docker      runtime "nvlaunch" merged into /etc/docker/daemon.json
                ({"path": NVLAUNCH, "runtimeArgs": ["runtime"]}: dockerd wraps a runtime with
                runtimeArgs in a script `PATH ARGS $@`, so runc's arguments follow "runtime")
    containerd  a marked block appended to /etc/containerd/config.toml that registers
                runtime "nvlaunch" (io.containerd.runc.v2 with BinaryName = a two-line
                wrapper /usr/local/bin/nvlaunch-runtime that runs `nvlaunch runtime "$@"`,
                since the runc shim passes no extra arguments); plain text, no TOML library
    runc        prints how to use the shim or the hook; with --config BUNDLE/config.json,
                adds the prestart hook to that config.json
    lxc         nvlaunch.frontends.lxc_hook.setup_lxc(args, dry_run, gopts)

Options:
    --dry-run            print what would be written and where; write nothing
    --config PATH        the file to write instead of the default
    --hook-path PATH     the nvlaunch executable the hook / runtime entry runs
                         (default: NVLAUNCH_HOOK_PATH, `nvlaunch` on PATH, sys.argv[0])
    --wrapper PATH       containerd: where the runtime wrapper goes
    --runtime-name NAME  docker/containerd: the runtime's name (default nvlaunch)
    --no-cgroups         hook env NVLAUNCH_NO_CGROUPS=1 (no device cgroup rules)
The hook's environment carries the host roots given to setup (--driver-root ... before
`setup`, or NVLAUNCH_*_ROOT), so a hook for a non-standard driver root needs no more.

Why podman/CRI-O hooks use `when: {"always": true}`: the hooks.d schema (containers/common
pkg/hooks/docs/oci-hooks.5.md, 1.0.0) can only match annotations, process.args[0]
(`commands`) and `hasBindMounts`; it has no condition on process.env.  The hook itself
exits at once (doing nothing) when NVIDIA_VISIBLE_DEVICES is unset, empty or void, which
is what NVIDIA's own hooks.d file (`nvidia-ctk runtime configure`) does too.
"""
from __future__ import annotations

import json
import os
import sys

from nvlaunch.core import errors as E

TARGETS = ("runc", "podman", "crio", "docker", "containerd", "lxc")
HOOKS_FILE = "nvlaunch.json"
DEFAULT_PATHS = {
    "podman": "/usr/share/containers/oci/hooks.d/" + HOOKS_FILE,
    "crio": "/etc/containers/oci/hooks.d/" + HOOKS_FILE,
    "docker": "/etc/docker/daemon.json",
    "containerd": "/etc/containerd/config.toml",
}
DEFAULT_WRAPPER = "/usr/local/bin/nvlaunch-runtime"
RUNTIME_NAME = "nvlaunch"
MARK_BEGIN = "# BEGIN nvlaunch (written by `nvlaunch setup containerd`; edit with care)"
MARK_END = "# END nvlaunch"

SETUP_OPTS = {
    "--dry-run": ("dry_run", False, False), "--config": ("config", True, False),
    "--hook-path": ("hook_path", True, False), "--wrapper": ("wrapper", True, False),
    "--runtime-name": ("runtime_name", True, False), "--no-cgroups": ("no_cgroups", False, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}
SETUP_USAGE = ("usage: nvlaunch setup {runc|podman|crio|docker|containerd|lxc} [--dry-run] "
               "[--config PATH] [--hook-path PATH] [--wrapper PATH] [--runtime-name NAME] "
               "[--no-cgroups]\n")


class Writer:
    """Writes files atomically, or with dry_run only prints what it would write."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.written: list[str] = []

    def write(self, path: str, text: str, mode: int = 0o644, backup: bool = True) -> None:
        if self.dry_run:
            self.out.write(f"--- would write {path} (mode {mode:04o}):\n{text}")
            if not text.endswith("\n"):
                self.out.write("\n")
            return
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        if backup and os.path.exists(path):
            with open(path, "rb") as f:
                old = f.read()
            if old == text.encode():
                self.out.write(f"{path}: unchanged\n")
                return
            _atomic_write(path + ".bak", old, os.stat(path).st_mode & 0o7777)
        _atomic_write(path, text.encode(), mode)
        self.written.append(path)
        self.out.write(f"wrote {path}\n")


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    from nvlaunch.core.files import write_atomic
    write_atomic(path, data, mode)


def _hook_path(opts: dict) -> str:
    from nvlaunch.frontends.runtime_shim import hook_path
    path = opts.get("hook_path")
    if path:
        if not os.path.isabs(path):
            raise E.UsageError(f"--hook-path {path}: must be an absolute path")
        return path
    return hook_path()


def _hook_env(gopts: dict, opts: dict) -> list:
    from nvlaunch.frontends.runtime_shim import hook_env
    env = hook_env(gopts)
    if opts.get("no_cgroups") and "NVLAUNCH_NO_CGROUPS=1" not in env:
        env.append("NVLAUNCH_NO_CGROUPS=1")
    return env


# ---- podman / CRI-O ------------------------------------------------------------------

def hooks_d_json(path: str, env: list) -> dict:
    """The OCI hooks.d definition (1.0.0 schema) of the nvlaunch prestart hook."""
    from nvlaunch.frontends.runtime_shim import hook_entry
    return {
        "version": "1.0.0",
        "hook": hook_entry(path, env),
        "when": {"always": True},
        "stages": ["prestart"],
    }


def setup_hooks_d(target: str, gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_PATHS[target]
    data = hooks_d_json(_hook_path(opts), _hook_env(gopts, opts))
    w.write(dest, json.dumps(data, indent=2) + "\n")
    if not w.dry_run:
        d = os.path.dirname(os.path.abspath(dest))
        if target == "podman":
            where = (f"podman reads {d} by default" if dest == DEFAULT_PATHS[target]
                     else f"pass --hooks-dir {d} to podman (or list it in containers.conf hooks_dir)")
            w.out.write(f"{where}; run containers with -e NVIDIA_VISIBLE_DEVICES=all\n")
        else:
            w.out.write(f"make sure crio.conf hooks_dir lists {d}\n")
    return 0


# ---- docker ----------------------------------------------------------------------------

def docker_merge(existing: dict, name: str, path: str) -> dict:
    """daemon.json with runtimes[name] set; every other key kept."""
    merged = dict(existing)
    runtimes = merged.get("runtimes")
    if runtimes is None:
        runtimes = {}
    if not isinstance(runtimes, dict):
        raise E.UsageError("daemon.json: \"runtimes\" is not an object")
    runtimes = dict(runtimes)
    runtimes[name] = {"path": path, "runtimeArgs": ["runtime"]}
    merged["runtimes"] = runtimes
    return merged


def _load_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise E.UsageError(f"{path}: {err.strerror}") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as err:
        raise E.UsageError(f"{path}: not valid JSON ({err}); not touching it") from None
    if not isinstance(data, dict):
        raise E.UsageError(f"{path}: not a JSON object; not touching it")
    return data


def setup_docker(gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_PATHS["docker"]
    name = opts.get("runtime_name") or RUNTIME_NAME
    merged = docker_merge(_load_json(dest), name, _hook_path(opts))
    w.write(dest, json.dumps(merged, indent=2) + "\n")
    if _hook_env(gopts, opts)[1:]:
        w.out.write("note: dockerd passes its own environment to the runtime; set "
                    + " ".join(_hook_env(gopts, opts)[1:]) + " in dockerd's environment\n")
    if not w.dry_run:
        w.out.write(f"restart dockerd, then: docker run --runtime={name} "
                    "-e NVIDIA_VISIBLE_DEVICES=all IMAGE\n")
    return 0


# ---- containerd ------------------------------------------------------------------------

def _toml_version(text: str) -> int:
    import re
    m = re.search(r"(?m)^\s*version\s*=\s*(\d+)", text)
    return int(m.group(1)) if m else 1


def containerd_block(version: int, name: str, wrapper: str) -> str:
    """The marked TOML block registering runtime `name` for config `version`."""
    table = {1: 'plugins.cri.containerd.runtimes',
             2: 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes',
             3: 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'}.get(version)
    if table is None:
        raise E.UsageError(f"containerd config version {version} is not one nvlaunch knows (1-3)")
    key = f'{table}.{_toml_key(name)}'
    return (f"{MARK_BEGIN}\n"
            f"[{key}]\n"
            f'  runtime_type = "io.containerd.runc.v2"\n'
            f"[{key}.options]\n"
            f"  BinaryName = {json.dumps(wrapper)}\n"
            f"{MARK_END}\n")


def _toml_key(name: str) -> str:
    import re
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def containerd_merge(text: str, name: str, wrapper: str) -> str:
    """`text` with the nvlaunch block added, or replaced where the markers already are."""
    new_file = not text.strip()
    version = 2 if new_file else _toml_version(text)
    block = containerd_block(version, name, wrapper)
    begin, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if begin != -1 and end != -1 and end > begin:
        end_line = text.find("\n", end)
        end_line = len(text) if end_line == -1 else end_line + 1
        return text[:begin] + block + text[end_line:]
    header = block.splitlines()[1]
    if header in text:
        raise E.UsageError(f"containerd config already defines {header} outside nvlaunch's "
                           "block; not touching it")
    if new_file:
        return "version = 2\n\n" + block
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + block


def wrapper_script(path: str) -> str:
    return f'#!/bin/sh\nexec {_sh_quote(path)} runtime "$@"\n'


def _sh_quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def setup_containerd(gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_PATHS["containerd"]
    name = opts.get("runtime_name") or RUNTIME_NAME
    wrapper = opts.get("wrapper") or DEFAULT_WRAPPER
    try:
        with open(dest, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise E.UsageError(f"{dest}: {err.strerror}") from None
    merged = containerd_merge(text, name, wrapper)
    w.write(wrapper, wrapper_script(_hook_path(opts)), 0o755, backup=False)
    w.write(dest, merged)
    if not w.dry_run:
        w.out.write(f"restart containerd; with Kubernetes add a RuntimeClass with handler {name}\n")
    return 0


# ---- runc ------------------------------------------------------------------------------

def setup_runc(gopts: dict, opts: dict, w: Writer) -> int:
    from nvlaunch.frontends.runtime_shim import add_hook, hook_entry
    path = _hook_path(opts)
    entry = hook_entry(path, _hook_env(gopts, opts))
    dest = opts.get("config")
    if dest:
        config = _load_json(dest)
        if not config:
            raise E.UsageError(f"{dest}: no runtime config there (make one with `runc spec`)")
        if add_hook(config, entry):
            w.write(dest, json.dumps(config, indent=2) + "\n", backup=False)
        else:
            w.out.write(f"{dest}: already has an nvlaunch hook\n")
        return 0
    w.out.write(
        "runc has no configuration file to change.  Either run runc through the shim, which\n"
        "adds the hook to the bundle's config.json of containers that set NVIDIA_VISIBLE_DEVICES:\n\n"
        f"    {path} runtime run --bundle BUNDLE ID        (instead of: runc run --bundle BUNDLE ID)\n\n"
        "or add this entry to hooks.prestart of the bundle's config.json\n"
        "(`nvlaunch setup runc --config BUNDLE/config.json` does it):\n\n"
        + json.dumps(entry, indent=2) + "\n")
    return 0


def setup_lxc(gopts: dict, args: list) -> int:
    """`setup lxc NAME ...`: the container config block (lxc_hook.setup_lxc)."""
    from nvlaunch.frontends import lxc_hook
    return int(lxc_hook.setup_lxc(args, "--dry-run" in args, gopts=gopts) or 0)


def cmd_setup(gopts: dict, args: list) -> int:
    from nvlaunch.cli.main import parse_command
    if not args or args[0] in ("--help", "-h"):
        sys.stdout.write(SETUP_USAGE)
        return 0 if args else E.EXIT_SETUP
    target, rest = args[0], args[1:]
    if target not in TARGETS:
        raise E.UsageError(f"setup: unknown system {target!r} (one of {', '.join(TARGETS)})")
    if target == "lxc":
        return setup_lxc(gopts, rest)
    if target == "podman" and "--cdi" in rest:
        # `setup podman --cdi`: a CDI spec in /etc/cdi instead of the OCI hook (cdi.py)
        from nvlaunch.frontends import cdi
        return int(cdi.setup_cdi(rest, "--dry-run" in rest, gopts=gopts) or 0)
    parsed = parse_command(rest, SETUP_OPTS, f"setup {target}", SETUP_USAGE)
    if parsed is None:
        return 0
    opts = parsed[0]
    w = Writer(bool(opts.get("dry_run")))
    if target in ("podman", "crio"):
        return setup_hooks_d(target, gopts, opts, w)
    if target == "docker":
        return setup_docker(gopts, opts, w)
    if target == "containerd":
        return setup_containerd(gopts, opts, w)
    return setup_runc(gopts, opts, w)


__all__ = ["cmd_setup", "hooks_d_json", "docker_merge", "containerd_merge", "containerd_block",
           "wrapper_script", "Writer"]
