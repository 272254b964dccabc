"""Where a process's device cgroup is: /proc/PID/cgroup and mountinfo read and matched.

/proc/PID/cgroup lists "hierarchy-ID:controllers:path" per hierarchy (cgroups(7)).  On a
hybrid host both a v1 "N:devices:/x" line and the v2 "0::/y" line are there; the v1
devices controller is the one the runtime used then, so it wins, unless the process
sits in the v1 root (which allows every device: the runtime did not use v1) or no v1
devices hierarchy is mounted where the runtime runs (a runtime that sees only cgroup2
at /sys/fs/cgroup, as on a v2-only host, uses eBPF).  The path is relative to the root
of the reader's cgroup namespace; the mount point comes from mountinfo (proc(5)), whose
4th field is the root of the mount inside the hierarchy (not "/" for nested or cgroupns
mounts, and starting with "/.." when the cgroup is outside the mount: rejected, like
libnvidia-container's find_device_cgroup_path()).  Reads only: exec.cgroup changes rules.
"""
from __future__ import annotations


from nvlaunch.core.errors import CgroupError
from nvlaunch.core.records import record
from nvlaunch.host.view import HostView, is_initial_root

TYPE_CHECKING = False   # `collections.abc` costs 2 ms; annotations only
if TYPE_CHECKING:
    from collections.abc import Callable


@record
class CgroupTarget:
    """The cgroup directory whose device policy we change: v1 devices or v2 unified."""
    version: int
    path: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (show_mountinfo()
    # -> seq_path_root()/mangle() in fs/proc_namespace.c).
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:3]
        if len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(/proc/PID/cgroup text) -> (v1 devices path, v2 path), either None if absent.

    Lines are "hierarchy-ID:controller-list:cgroup-path" (cgroups(7)); the path may
    itself hold ':' (systemd's "slice:prefix:name" for containerd), so split twice
    only.  Lines that are not ours ("1:net_cls:/", "9:name=systemd:/") are skipped, not
    errors: NVIDIA's v2 parser failed on exactly those (libnvidia-container#150).
    """
    v1 = v2 = None
    # "\n" only: str.splitlines() also breaks at \v, \f, \x1c-\x1e, \x85, U+2028/9,
    # which a cgroup's name may hold (the kernel escapes nothing here).
    for line in text.split("\n"):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "devices" in controllers.split(","):
            v1 = path
    return v1, v2


@record
class MountEntry:
    root: str
    mount_point: str
    fstype: str
    super_options: tuple[str, ...]


def parse_mountinfo(text: str) -> list[MountEntry]:
    """proc(5) mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE
    SOURCE SUPEROPTS"; the optional fields end at the lone "-".

    Split as the kernel writes it: lines at newlines, fields at single spaces.  Only
    space, tab, newline and backslash are escaped (as octal) in a path, so a mount point
    can hold any other whitespace (vertical tab, form feed, U+0085, ...):
    str.split()/splitlines() would break such a name into fields and lines of the
    attacker's choosing."""
    out = []
    for line in text.split("\n"):
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 4:
            continue
        out.append(MountEntry(_unescape(fields[3]), _unescape(fields[4]), fields[sep + 1],
                              tuple(fields[sep + 3].split(","))))
    return out


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def _resolve(mounts: list[MountEntry], cg_path: str, want: Callable[[MountEntry], bool],
             what: str) -> str:
    """The directory of cgroup `cg_path` under the first mount of the hierarchy that
    contains it; the mount root is stripped from the path (nested mounts)."""
    parts = _components(cg_path)
    if ".." in parts:
        raise CgroupError(f"{what} cgroup path {cg_path!r} contains '..'")
    seen = []
    for m in mounts:
        if not want(m):
            continue
        root = _components(m.root)
        seen.append(m.root)
        # A root with ".." means the cgroup namespace root is below the mount's root
        # or elsewhere: its paths do not line up with ours.
        if ".." in root or parts[:len(root)] != root:
            continue
        rest = parts[len(root):]
        return "/".join([m.mount_point.rstrip("/")] + rest) if rest else m.mount_point
    if not seen:
        raise CgroupError(f"no {what} hierarchy is mounted (mountinfo has none)")
    raise CgroupError(f"{what} cgroup {cg_path!r} is outside every mount of the hierarchy "
                      f"(mount roots: {', '.join(seen)})")


def find_cgroup(pid: int | str, proc_root: str = "/",
                mountinfo_pid: int | str = "self") -> CgroupTarget:
    """The device cgroup of process `pid`: v1 devices if the runtime used it, else v2.

    Mount points come from /proc/<mountinfo_pid>/mountinfo: "self" for a caller in the
    host's mount namespace (the hook), the runtime's pid otherwise (NVIDIA reads the
    parent runtime's).  `proc_root` relocates /proc for tests.
    """
    host = HostView(proc_root=proc_root)
    cg_file = host.proc(f"/proc/{pid}/cgroup")
    mi_file = host.proc(f"/proc/{mountinfo_pid}/mountinfo")
    # surrogateescape: a path's bytes need not be UTF-8, and must come back unchanged
    try:
        with open(cg_file, encoding="utf-8", errors="surrogateescape") as f:
            v1, v2 = parse_proc_cgroup(f.read())
        with open(mi_file, encoding="utf-8", errors="surrogateescape") as f:
            mounts = parse_mountinfo(f.read())
    except OSError as err:
        raise CgroupError(f"read {err.filename}: {err.strerror}") from err
    is_v1_devices = lambda m: m.fstype == "cgroup" and "devices" in m.super_options  # noqa: E731
    if v1 is not None and (v2 is None or (_components(v1) and any(map(is_v1_devices, mounts)))):
        return CgroupTarget(1, _resolve(mounts, v1, is_v1_devices, "v1 devices"))
    if v2 is not None:
        return CgroupTarget(2, _resolve(mounts, v2, lambda m: m.fstype == "cgroup2",
                                        "cgroup2"))
    raise CgroupError(f"{cg_file}: no devices or unified cgroup line")


def needs_cgroup_rules(proc_root: str = "/") -> bool:
    """True for root in the initial user namespace: the only caller that can (and must)
    change device rules (host.is_initial_root)."""
    return is_initial_root(proc_root)
