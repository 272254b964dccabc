"""`nvlaunch cdi generate`: this host's GPUs as a CDI spec (kind nvidia.com/gpu).

The spec is the same build_plan() every other front end applies, rendered as CDI
containerEdits (reference rootless-launchers.md 2.8, nvidia-stack.md 2.3):

- one device per GPU by index ("0", "1", ...) and by UUID, one per MIG device ("G:M",
  and its MIG UUID where NVML knows it), and "all"; each device's edits are its own
  device nodes (/dev/nvidiaN, its DRM card/renderD nodes; for MIG the parent's node and
  the GI/CI nvidia-cap nodes);
- top-level edits, applied once whatever device is asked for: the control nodes
  (nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset), a read-only bind of every
  driver file of every capability (libraries at their host directory: the plan is built
  with libdir=None), NVIDIA_VISIBLE_DEVICES=void (so an OCI hook, ours or NVIDIA's, does
  not inject a second time), and one createContainer hook, `nvlaunch ldcache`, that makes
  the .so links and puts the libraries in the container's ld.so.cache (cdi_hook.py).

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
import sys

from nvlaunch.core.errors import UsageError
from nvlaunch.plan.records import BindDevice, BindDir, BindFile, Symlink

KIND = "nvidia.com/gpu"
# The newest CDI version podman 4.3 (Debian 12; container-device-interface 0.5.x) accepts:
# it rejects a spec whose cdiVersion is 0.6.0 or newer ("unresolvable CDI devices").  Our
# spec needs 0.5.0 itself: deviceNode hostPath, device names starting with a digit.
DEFAULT_CDI_VERSION = "0.5.0"
MIN_CDI_VERSION = "0.5.0"
KNOWN_CDI_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
DEFAULT_CAPABILITIES = "all"
SPEC_MODE = 0o644     # rootless podman must read it (NVIDIA toolkit CHANGELOG v1.14)
DEFAULT_SPEC_PATH = "/etc/cdi/nvidia.json"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
# Mount options: libnvidia-container binds driver files RDONLY|NODEV|NOSUID; sockets and
# the MPS directory stay writable but never executable.
FILE_OPTIONS = ["ro", "nosuid", "nodev", "bind"]
IPC_OPTIONS = ["nosuid", "nodev", "noexec", "bind"]
DEVICE_PERMISSIONS = "rw"    # as the toolkit's cgroup rules: open, not mknod

GENERATE_OPTS = {
    "--output": ("output", True, False), "-o": ("output", True, False),
    "--format": ("format", True, False), "--cdi-version": ("cdi_version", True, False),
    "--hook-path": ("hook_path", True, False), "--capabilities": ("capabilities", True, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}
SETUP_OPTS = {k: v for k, v in GENERATE_OPTS.items()}
SETUP_OPTS.update({"--cdi": ("cdi", False, False), "--dry-run": ("dry_run", False, False)})

USAGE = """usage: nvlaunch cdi generate [--output FILE] [--format json|yaml] [--cdi-version V]
                             [--hook-path PATH] [--capabilities CAPS]
       nvlaunch cdi list
  --output FILE        write the spec there (atomically, mode 0644) instead of stdout
  --format json|yaml   default: from FILE's extension, else json
  --cdi-version V      cdiVersion to declare (default 0.5.0, what podman 4.3 accepts; >= 0.5.0)
  --hook-path PATH     the nvlaunch executable the createContainer hook runs
  --capabilities CAPS  driver files to bind (default all, as NVIDIA's spec)
"""


def _version_tuple(v: str) -> tuple:
    try:
        parts = tuple(int(x) for x in v.split("."))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise UsageError(f"--cdi-version {v}: expected a version like 0.5.0")
    return parts


def check_cdi_version(v: str) -> str:
    if _version_tuple(v) < _version_tuple(MIN_CDI_VERSION):
        raise UsageError(f"--cdi-version {v}: the spec needs at least {MIN_CDI_VERSION} "
                         "(deviceNode hostPath, device names starting with a digit)")
    if v not in KNOWN_CDI_VERSIONS:
        raise UsageError(f"--cdi-version {v}: unknown CDI version",
                         hint="known: " + ", ".join(KNOWN_CDI_VERSIONS))
    return v


# ------------------------------------------------------------------ the spec

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


def build_spec(host, cdi_version: str = DEFAULT_CDI_VERSION, hook_path: str | None = None,
               capabilities: str = DEFAULT_CAPABILITIES, kind: str = KIND) -> dict:
    """The CDI spec for `host` (a HostView) as a dict, ready for json.dumps."""
    from nvlaunch.host import driver as drv
    from nvlaunch.host import gpus as gp
    from nvlaunch.plan.build import build_plan
    from nvlaunch.frontends.ldcache_hook import hook_invocation
    from nvlaunch.plan.request import Request
    check_cdi_version(cdi_version)
    driver = drv.discover(host)
    all_gpus = gp.enumerate_gpus(host)

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
    for soname, path, _is32 in base.ldcache:
        d = os.path.dirname(path)
        if d not in folders:
            folders.append(d)
    path, argv0, env = hook_invocation(hook_path)
    args = list(argv0) + ["ldcache"]
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
        for m_index, mig in enumerate(gp.enumerate_migs(host, g)):
            mnodes = _dedup(nodes[:1] + _mig_nodes(host, mig))
            every += mnodes
            medits = {"deviceNodes": [_node(n) for n in mnodes]}
            devices.append({"name": f"{g.index}:{m_index}", "containerEdits": medits})
    devices += by_uuid
    devices.append({"name": "all", "containerEdits": {"deviceNodes": [_node(n) for n in _dedup(every)]}})
    return {"cdiVersion": cdi_version, "kind": kind, "devices": devices, "containerEdits": top}


# ------------------------------------------------------------------ output

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
                lines.append(f"{pad}{k}: {_yaml_empty(v) if isinstance(v, (dict, list)) else _yaml_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2:]}")
            else:
                lines.append(f"{pad}- {_yaml_empty(item) if isinstance(item, (dict, list)) else _yaml_scalar(item)}")
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
    if fmt:
        if fmt not in ("json", "yaml"):
            raise UsageError(f"--format {fmt}: expected json or yaml")
        return fmt
    if path and path.endswith((".yaml", ".yml")):
        return "yaml"
    return "json"


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """The spec, written atomically (files.write_atomic): a runtime reading the spec
    directory never sees half a file."""
    from nvlaunch.core.files import write_atomic as write
    write(path, text, mode)


# ------------------------------------------------------------------ commands

def _host(gopts: dict | None):
    from nvlaunch.host.view import HostView
    g = gopts or {}
    return HostView.from_env(g.get("driver_root"), g.get("dev_root"), g.get("proc_root"))


def _spec_from_opts(gopts, opts: dict) -> tuple[dict, str]:
    spec = build_spec(_host(gopts), cdi_version=opts.get("cdi_version", DEFAULT_CDI_VERSION),
                      hook_path=opts.get("hook_path"),
                      capabilities=opts.get("capabilities", DEFAULT_CAPABILITIES))
    return spec, format_for(opts.get("output"), opts.get("format"))


def device_names(spec: dict) -> list:
    return [f"{spec['kind']}={d['name']}" for d in spec["devices"]]


def cmd_cdi(gopts: dict, args: list) -> int:
    from nvlaunch.cli.main import parse_command
    if not args or args[0] in ("--help", "-h", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 125
    sub, rest = args[0], args[1:]
    if sub == "generate":
        parsed = parse_command(rest, GENERATE_OPTS, "cdi generate", USAGE)
        if parsed is None:
            return 0
        opts = parsed[0]
        spec, fmt = _spec_from_opts(gopts, opts)
        text = render(spec, fmt)
        if opts.get("output") and opts["output"] != "-":
            write_atomic(opts["output"], text)
        else:
            sys.stdout.write(text)
        return 0
    if sub == "list":
        parsed = parse_command(rest, GENERATE_OPTS, "cdi list", USAGE)
        if parsed is None:
            return 0
        opts = parsed[0]
        spec, _ = _spec_from_opts(gopts, opts)
        sys.stdout.write("".join(n + "\n" for n in device_names(spec)))
        return 0
    raise UsageError(f"cdi: unknown subcommand {sub!r} (want generate or list)")


def _other_specs(kind: str, ours: str) -> list:
    """Spec files other than `ours` in the CDI directories that declare `kind`; two
    specs with the same device names make the runtime refuse those devices."""
    out = []
    for d in SPEC_DIRS:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = os.path.join(d, name)
            if os.path.realpath(p) == os.path.realpath(ours) or not name.endswith((".json", ".yaml", ".yml")):
                continue
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    text = f.read(65536)
            except OSError:
                continue
            if kind in text:
                out.append(p)
    return out


def setup_cdi(args: list, dry_run: bool, gopts: dict | None = None) -> int:
    """`nvlaunch setup podman --cdi [--output FILE] [--format F] [--cdi-version V]
    [--hook-path PATH] [--capabilities CAPS]`: write the spec to /etc/cdi/nvidia.json
    (or FILE).  `args` are the options after `setup podman`; with `dry_run` the spec is
    printed with the path it would go to, and nothing is written."""
    from nvlaunch.cli.main import parse_command
    parsed = parse_command(list(args), SETUP_OPTS, "setup podman", USAGE)
    if parsed is None:
        return 0
    opts = parsed[0]
    dry_run = dry_run or bool(opts.get("dry_run"))
    path = opts.get("output") or DEFAULT_SPEC_PATH
    spec, fmt = _spec_from_opts(gopts, {**opts, "output": path})
    text = render(spec, fmt)
    for other in _other_specs(spec["kind"], path):
        sys.stderr.write(f"nvlaunch: warning: {other} also declares {spec['kind']}; "
                         "remove one of them or the runtime refuses the devices\n")
    if dry_run:
        sys.stdout.write(f"# would write {path} (mode 0644)\n{text}")
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    write_atomic(path, text)
    sys.stdout.write(f"wrote {path}: " + ", ".join(device_names(spec)) + "\n"
                     f"use: podman run --device {spec['kind']}=all ...\n")
    return 0
