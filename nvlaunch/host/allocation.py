"""Which of the host's GPUs the caller was allocated: a scheduler's grant, read, never changed.

Two sources, both about the caller itself, each used where it can be trusted:

1. **The device cgroup, as the kernel applies it.**  access(2) on a character device runs
   the device cgroup check (devcgroup_inode_permission(): the v1 devices controller's
   rules and a v2 BPF_CGROUP_DEVICE program alike) without opening the device, so no
   driver code runs: no GPU is initialised, nothing is left open.  Neither rule set can be
   read directly without privileges (v1's devices.list shows "a *:* rwm" for an allow-all
   cgroup with deny exceptions, which is how Slurm constrains; a v2 program needs
   CAP_BPF/CAP_SYS_ADMIN to read), so the check itself is asked.  A node whose mode bits
   grant the caller read and write but access() refuses is outside the cgroup; EACCES from
   the mode bits tells nothing and counts as allowed.
2. **Slurm's grant.**  slurmd sets SLURM_STEP_GPUS (a step) or SLURM_JOB_GPUS (a batch
   script) to Slurm's GPU ids, which number the `File=` entries of gres.conf for this node
   in the order gres.conf lists them (measured on 22.05: not PCI order, not minor order),
   so the ids are mapped through gres.conf (beside $SLURM_CONF, else
   /etc/slurm/slurm.conf) to device numbers by stat() of each file.  This is what makes
   a job without ConstrainDevices use its own GPUs.  A Slurm task on a node whose gres.conf
   lists GPUs, that has neither variable, was given none.  With `AutoDetect=nvml` and no
   File= lines Slurm numbers the GPUs as NVML does (PCI bus order: nvlaunch's indices).

Both present: the GPUs both admit.  Neither restricting anything: None (the whole host).
CUDA_VISIBLE_DEVICES and GPU_DEVICE_ORDINAL are not sources: they are a program's device
mask, numbered in CUDA's order (CUDA_DEVICE_ORDER) and, under Slurm's ConstrainDevices,
relative to the cgroup (Slurm renumbers them 0..n-1), so they cannot name host GPUs.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core.errors import SelectionError
from nvlaunch.core.records import record
from nvlaunch.host.view import HostView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from nvlaunch.host.gpus import Gpu

MAJOR_NVIDIA = 195          # the NVIDIA character device major (fixed, devices.txt)
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
# What the allocation is read from in the caller's environment (the plan cache needs no
# more: the allocation is resolved into the request's GPU list, plan.selection).
SLURM_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


@record
class Allocation:
    """The GPUs (by /dev/nvidia<minor>) a scheduler gave the caller, and where that was read."""
    minors: tuple[int, ...]
    source: str


# ------------------------------------------------------------------ the device cgroup


def _groups() -> set[int]:
    try:
        return {os.getegid(), *os.getgroups()}
    except OSError:
        return {os.getegid()}


def cgroup_denies(path: str, groups: set[int] | None = None) -> bool:
    """Whether the caller's device cgroup refuses read+write on character device `path`
    (access(2): the kernel's check without opening the device).  Missing, not a device,
    or refused by its mode bits: False (nothing known about the cgroup)."""
    if os.access(path, os.R_OK | os.W_OK):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISCHR(st.st_mode):
        return False
    uid = os.getuid()
    if uid == 0:
        return True           # root passes the mode bits (CAP_DAC_OVERRIDE): the cgroup said no
    mode = st.st_mode
    if st.st_uid == uid:
        want = 0o600
    elif st.st_gid in (groups if groups is not None else _groups()):
        want = 0o060
    else:
        want = 0o006
    return mode & want == want


def _cgroup_allowed(host: HostView, gpus: Sequence[Gpu]) -> tuple[int, ...] | None:
    """The minors the device cgroup admits, or None when it admits every GPU."""
    groups = _groups()
    allowed = tuple(g.minor for g in gpus
                    if not cgroup_denies(host.dev(f"/dev/nvidia{g.minor}"), groups))
    return None if len(allowed) == len(gpus) else allowed


def unrestricted(host: HostView, environ: Mapping[str, str] | None = None) -> bool:
    """True where read_allocation() would surely say None, answered without enumerating
    the GPUs (`run` asks on every launch): no Slurm task in the environment (neither of
    SLURM_VARS, no SLURM_JOB_ID), and the device cgroup admits every /dev/nvidiaN node
    there is.  False means only: ask read_allocation()."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_JOB_ID") or any(v in environ for v in SLURM_VARS):
        return False
    dev = host.dev("/dev")
    try:
        names = os.listdir(dev)
    except OSError:
        return False
    groups = _groups()
    for name in names:
        minor = name[len("nvidia"):]
        if name.startswith("nvidia") and minor.isascii() and minor.isdigit() \
                and cgroup_denies(f"{dev}/{name}", groups):
            return False
    return True


# ------------------------------------------------------------------ Slurm


def expand_hostlist(text: str) -> list[str]:
    """Slurm's bracket form: "/dev/nvidia[0-2,5]" -> 4 paths, "node[01-03]" -> 3 names
    (zero-padded as written); several brackets multiply; text without brackets is itself."""
    head, bra, rest = text.partition("[")
    if not bra:
        return [text]
    inner, ket, tail = rest.partition("]")
    if not ket:
        raise ValueError(f"unclosed '[' in {text!r}")
    items: list[str] = []
    for part in inner.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"bad range {part!r} in {text!r}")
        if not dash:
            items.append(lo)
            continue
        if int(hi) - int(lo) > 4096:
            raise ValueError(f"range {part!r} too large in {text!r}")
        items.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return [head + item + t for item in items for t in expand_hostlist(tail)]


def _ids(text: str) -> list[int]:
    """SLURM_STEP_GPUS "0,2" (ranges "0-3" too) -> [0, 2]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or len(lo) > 6 or len(hi) > 6:
            raise ValueError(part)
        out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return out


@record
class GresGpus:
    """What gres.conf says about this node's GPUs: their device files in Slurm's id order,
    and whether Slurm detects them itself (AutoDetect=nvml and no File= lines)."""
    files: tuple[str, ...]
    autodetect: str | None


def parse_gres_conf(text: str, node: str) -> GresGpus:
    """gres.conf (gres.conf(5)): "key=value" words per line, keys case-insensitive, '#'
    comments; a line with NodeName= applies to the nodes its host list names, one without
    to every node; Name=gpu lines give File= (bracket ranges expanded) in order.
    AutoDetect= on a line of its own is global, on a NodeName= line for those nodes."""
    files: list[str] = []
    autodetect: str | None = None
    for raw in text.split("\n"):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields: dict[str, str] = {}
        for word in line.split():
            key, eq, value = word.partition("=")
            if eq:
                fields[key.lower()] = value.strip('"')
        if "nodename" in fields:
            names = [n for part in _split_top(fields["nodename"]) for n in expand_hostlist(part)]
            if node not in names:
                continue
        if "autodetect" in fields:
            autodetect = fields["autodetect"].lower()
        if fields.get("name", "").lower() != "gpu" or "file" not in fields:
            continue
        for part in _split_top(fields["file"]):
            files.extend(expand_hostlist(part))
    return GresGpus(tuple(files), autodetect)


def _split_top(text: str) -> list[str]:
    """"a[1-2],b" -> ["a[1-2]", "b"]: commas outside brackets."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [s for s in out if s]


def gres_conf_path(environ: Mapping[str, str]) -> str:
    return os.path.join(os.path.dirname(environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF), "gres.conf")


def _node(environ: Mapping[str, str]) -> str:
    return environ.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _minor_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != MAJOR_NVIDIA:
        return None
    return os.minor(st.st_rdev)


def _slurm_allowed(environ: Mapping[str, str], gpus: Sequence[Gpu]) -> tuple[tuple[int, ...], str] | None:
    """(minors, description) of Slurm's grant, or None outside a Slurm task."""
    var = next((v for v in SLURM_VARS if v in environ), None)
    in_task = bool(environ.get("SLURM_JOB_ID") and environ.get("SLURMD_NODENAME"))
    if var is None and (not in_task or environ.get("SLURM_CONTAINER")):
        # (a --container step: Slurm 22.05 gives its runtime none of the GPU variables,
        # so their absence there says nothing; the device cgroup still does)
        return None
    conf = gres_conf_path(environ)
    text = _read(conf)
    gres = parse_gres_conf(text, _node(environ)) if text is not None else None
    job = environ.get("SLURM_JOB_ID", "?")
    step = environ.get("SLURM_STEP_ID")
    where = f"Slurm job {job}" + (f" step {step}" if step else "")
    if var is None:
        if gres is None or not (gres.files or gres.autodetect not in (None, "off")):
            return None     # no GPUs configured for this node: Slurm schedules none here
        return (), f"{where} (no GPUs allocated)"
    raw = environ[var]
    try:
        ids = _ids(raw)
    except ValueError:
        raise SelectionError(f"{var}={raw!r}: not a list of Slurm GPU ids") from None
    where = f"{where} ({var}={raw})"
    if gres is None:
        raise SelectionError(f"{where}: cannot map Slurm's GPU ids to devices: "
                             f"{conf} cannot be read", hint="set SLURM_CONF to the slurm.conf "
                             "beside the node's gres.conf")
    if not gres.files and gres.autodetect not in (None, "off"):
        by_index = sorted(gpus, key=lambda g: g.index)      # NVML's numbering: PCI order
        out = []
        for i in ids:
            if i >= len(by_index):
                raise SelectionError(f"{where}: GPU id {i}, but this host has {len(by_index)} GPUs")
            out.append(by_index[i].minor)
        return tuple(out), where
    out = []
    for i in ids:
        if i >= len(gres.files):
            raise SelectionError(f"{where}: GPU id {i}, but {conf} lists {len(gres.files)} GPU "
                                 f"file(s) for node {_node(environ)}")
        minor = _minor_of(gres.files[i])
        if minor is None:
            raise SelectionError(f"{where}: GPU id {i} is {gres.files[i]} in {conf}, which is not "
                                 "an NVIDIA GPU device node")
        out.append(minor)
    return tuple(out), where


# ------------------------------------------------------------------ the allocation


def read_allocation(host: HostView, environ: Mapping[str, str] | None = None,
                    gpus: Iterable[Gpu] | None = None) -> Allocation | None:
    """The caller's GPU allocation (see the module text), or None: no scheduler restricts
    it.  `environ`: the caller's environment (default os.environ); `gpus`: the host's
    (default enumerate_gpus(host)).  SelectionError where Slurm's grant cannot be mapped."""
    environ = os.environ if environ is None else environ
    if gpus is None:
        from nvlaunch.host.gpus import enumerate_gpus
        gpus = enumerate_gpus(host)
    gpus = tuple(gpus)
    if not gpus:
        return None
    slurm = _slurm_allowed(environ, gpus)
    cgroup = _cgroup_allowed(host, gpus)
    if slurm is None and cgroup is None:
        return None
    if slurm is None:
        assert cgroup is not None
        return Allocation(cgroup, "the device cgroup")
    minors, where = slurm
    if cgroup is not None:
        minors = tuple(m for m in minors if m in cgroup)
        where += " and the device cgroup"
    return Allocation(minors, where)
