"""This host's GPUs as a CDI spec (kind nvidia.com/gpu): build_plan() rendered as CDI
containerEdits.

- one device per GPU by index ("0", "1", ...) and by UUID, one per MIG device ("G:M",
  and its MIG UUID where NVML knows it), and "all"; each device's edits are its own
  device nodes (/dev/nvidiaN, its DRM card/renderD nodes; for MIG the parent's node and
  the GI/CI nvidia-cap nodes);
- top-level edits, applied once whatever device is asked for: the control nodes
  (nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset), a read-only bind of every
  driver file of every capability (libraries at their host directory: the plan is built
  with libdir=None), NVIDIA_VISIBLE_DEVICES=void (so an OCI hook, ours or NVIDIA's, does
  not inject a second time), and one createContainer hook, `nvlaunch ldcache`, that makes
  the .so links and puts the libraries in the container's ld.so.cache.  The caller
  passes how that hook runs nvlaunch (oci.hooks.invocation).

Device nodes carry only `path` (+ `hostPath` when the device root is not "/") and
`permissions`: the runtime stats hostPath for type/major/minor when the container is
created, so a spec in /etc/cdi stays right when dynamic majors (nvidia-uvm, nvidia-caps)
change at the next boot.  No cgroup rules are written here: the runtime (runc, crun)
derives them from deviceNodes.

What a spec cannot carry: the /proc/driver/nvidia view of `run` and the hooks (runc
refuses mounts under /proc), and the per-capability selection (CDI has no notion of it;
NVIDIA's spec also injects every driver library).  See docs/cdi.md.
"""
from __future__ import annotations

import json
import os

from nvlaunch.core.errors import UsageError
from nvlaunch.oci.hooks import Invocation
from nvlaunch.host.driver import discover
from nvlaunch.host.gpus import enumerate_gpus, enumerate_migs
from nvlaunch.plan.build import build_plan
from nvlaunch.plan.records import BindDevice, BindDir, BindFile, Symlink
from nvlaunch.plan.request import Request


KIND = "nvidia.com/gpu"


# The newest CDI version podman 4.3 (Debian 12; container-device-interface 0.5.x) accepts:
# it rejects a spec whose cdiVersion is 0.6.0 or newer ("unresolvable CDI devices").  Our
# spec needs 0.5.0 itself: deviceNode hostPath, device names starting with a digit.
DEFAULT_CDI_VERSION = "0.5.0"


MIN_CDI_VERSION = "0.5.0"


KNOWN_CDI_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")


DEFAULT_CAPABILITIES = "all"
SPEC_MODE = 0o644     # rootless podman must read it (NVIDIA toolkit CHANGELOG v1.14)


# Mount options: libnvidia-container binds driver files RDONLY|NODEV|NOSUID; sockets and
# the MPS directory stay writable but never executable.
FILE_OPTIONS = ["ro", "nosuid", "nodev", "bind"]


IPC_OPTIONS = ["nosuid", "nodev", "noexec", "bind"]


DEVICE_PERMISSIONS = "rw"    # as the toolkit's cgroup rules: open, not mknod


def _version_tuple(v: str) -> tuple:
    fields = v.split(".") if isinstance(v, str) else []
    if len(fields) != 3 or not all(f.isascii() and f.isdigit() and len(f) <= 9 for f in fields):
        raise UsageError(f"--cdi-version {v}: expected a version like 0.5.0")
    return tuple(int(f) for f in fields)


def check_cdi_version(v: str) -> str:
    if _version_tuple(v) < _version_tuple(MIN_CDI_VERSION):
        raise UsageError(f"--cdi-version {v}: the spec needs at least {MIN_CDI_VERSION} "
                         "(deviceNode hostPath, device names starting with a digit)")
    if v not in KNOWN_CDI_VERSIONS:
        raise UsageError(f"--cdi-version {v}: unknown CDI version",
                         hint="known: " + ", ".join(KNOWN_CDI_VERSIONS))
    return v


def _node(dev: BindDevice) -> dict:
    out = {"path": dev.dst}
    if dev.src != dev.dst:
        out["hostPath"] = dev.src
    out["permissions"] = DEVICE_PERMISSIONS
    return out


def _gpu_nodes(plan, control: set) -> list:
    return [d for d in plan.devices if d.dst not in control]


def _mig_nodes(host, mig) -> list:
    """/dev/nvidia-caps/nvidia-cap<N> of a MIG device's GI and CI access files."""
    out = []
    for minor in mig.cap_minors:
        path = f"/dev/nvidia-caps/nvidia-cap{minor}"
        src = host.dev(path)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            continue
        out.append(BindDevice(src, path, os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out


def _dedup(nodes) -> list:
    seen, out = set(), []
    for n in nodes:
        if n.dst not in seen:
            seen.add(n.dst)
            out.append(n)
    return out


def build_spec(host, hook: Invocation, cdi_version: str = DEFAULT_CDI_VERSION,
               capabilities: str = DEFAULT_CAPABILITIES, kind: str = KIND) -> dict:
    """The CDI spec for `host` (a HostView) as a dict, ready for json.dumps; `hook` is
    how its createContainer hook runs nvlaunch (oci.hooks.invocation)."""
    check_cdi_version(cdi_version)
    driver = discover(host)
    all_gpus = enumerate_gpus(host)

    # Top level: "none" = driver files and control nodes, no GPU node.
    base = build_plan(Request(gpus="none", capabilities=capabilities), host, libdir=None,
                      driver=driver, gpus=all_gpus)
    control = {d.dst for d in base.devices}
    mounts, seen = [], set()
    links, folders = [], []
    for e in base.entries:
        if isinstance(e, (BindFile, BindDir)) and not isinstance(e, BindDevice):
            if e.dst.startswith("/proc/") or e.dst in seen:
                continue        # the /proc/driver/nvidia view: runc refuses mounts there
            seen.add(e.dst)
            opts = FILE_OPTIONS if e.readonly else IPC_OPTIONS
            mounts.append({"hostPath": e.src, "containerPath": e.dst, "options": list(opts)})
        elif isinstance(e, Symlink):
            links.append(f"{e.target}::{e.link}")
    for _soname, path, _is32 in base.ldcache:
        d = os.path.dirname(path)
        if d not in folders:
            folders.append(d)
    path, env = hook.path, list(hook.env)
    args = hook.command("ldcache")
    for item in links:
        args += ["--link", item]
    for soname, lpath, is32 in base.ldcache:
        args += ["--lib32" if is32 else "--lib", f"{soname}::{lpath}"]
    for d in folders:
        args += ["--folder", d]
    top = {
        "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "deviceNodes": [_node(d) for d in base.devices],
        "mounts": mounts,
        "hooks": [{"hookName": "createContainer", "path": path, "args": args, "env": env}],
    }

    devices: list = []
    by_uuid: list = []
    every: list = []
    for g in all_gpus:
        plan = build_plan(Request(gpus=str(g.index), capabilities=capabilities), host,
                          libdir=None, driver=driver, gpus=all_gpus)
        nodes = _gpu_nodes(plan, control)
        every += nodes
        edits = {"deviceNodes": [_node(n) for n in nodes]}
        devices.append({"name": str(g.index), "containerEdits": edits})
        by_uuid.append({"name": g.uuid, "containerEdits": json.loads(json.dumps(edits))})
        for m_index, mig in enumerate(enumerate_migs(host, g)):
            mnodes = _dedup(nodes[:1] + _mig_nodes(host, mig))
            every += mnodes
            medits = {"deviceNodes": [_node(n) for n in mnodes]}
            devices.append({"name": f"{g.index}:{m_index}", "containerEdits": medits})
    devices += by_uuid
    devices.append({"name": "all", "containerEdits": {"deviceNodes": [_node(n) for n in _dedup(every)]}})
    return {"cdiVersion": cdi_version, "kind": kind, "devices": devices, "containerEdits": top}


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value, ensure_ascii=True)


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for the spec's plain data (dicts, lists, str, int, bool)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 2))
            else:
                text = _yaml_empty(v) if isinstance(v, (dict, list)) else _yaml_scalar(v)
                lines.append(f"{pad}{k}: {text}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2:]}")
            else:
                text = _yaml_empty(item) if isinstance(item, (dict, list)) else _yaml_scalar(item)
                lines.append(f"{pad}- {text}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return "\n".join(lines)


def _yaml_empty(v) -> str:
    return "{}" if isinstance(v, dict) else "[]"


def render(spec: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(spec, indent=2) + "\n"
    if fmt == "yaml":
        return "---\n" + to_yaml(spec) + "\n"
    raise UsageError(f"--format {fmt}: expected json or yaml")


def format_for(path: str | None, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("json", "yaml"):
            raise UsageError(f"--format {fmt}: expected json or yaml")
        return fmt
    if path and path.endswith((".yaml", ".yml")):
        return "yaml"
    return "json"


def device_names(spec: dict) -> list:
    return [f"{spec['kind']}={d['name']}" for d in spec["devices"]]


# Options of `cdi generate`, `cdi list` and `setup podman --cdi`: what the spec is made of.
SPEC_OPTS = {
    "--output": ("output", True, False), "-o": ("output", True, False),
    "--format": ("format", True, False), "--cdi-version": ("cdi_version", True, False),
    "--hook-path": ("hook_path", True, False), "--capabilities": ("capabilities", True, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}


def spec_from_options(host, hook: Invocation, opts: dict) -> tuple[dict, str]:
    """(spec, format) for parsed SPEC_OPTS; the options are checked before the host is read."""
    fmt = format_for(opts.get("output"), opts.get("format"))
    if "output" in opts and not opts["output"]:
        raise UsageError("--output '': want a file name, or - for stdout")
    if "hook_path" in opts and not opts["hook_path"]:
        raise UsageError("--hook-path '': want the absolute path of the nvlaunch executable")
    spec = build_spec(host, hook, cdi_version=opts.get("cdi_version", DEFAULT_CDI_VERSION),
                      capabilities=opts.get("capabilities", DEFAULT_CAPABILITIES))
    return spec, fmt
