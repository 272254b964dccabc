"""Device cgroup rules for a running container process: find its cgroup, widen its rules.

Used as root by the OCI hook (and by `run` for its own containers): the runtime has
already set a deny-by-default device policy, and the GPU nodes nvlaunch adds must be
allowed in it or open(2) fails with EPERM ("Failed to initialize NVML: Unknown Error").

Finding the cgroup (find_cgroup)
    /proc/PID/cgroup lists "hierarchy-ID:controllers:path" per hierarchy (cgroups(7)).
    On a hybrid host both a v1 "N:devices:/x" line and the v2 "0::/y" line are there;
    the v1 devices controller is the one the runtime used then, so it wins, unless the
    process sits in the v1 root (which allows every device: the runtime did not use v1)
    or no v1 devices hierarchy is mounted where the runtime runs (a runtime that sees
    only cgroup2 at /sys/fs/cgroup, as on a v2-only host, uses eBPF).  The path is
    relative to the root of the reader's cgroup namespace; the mount point comes from
    mountinfo (proc(5)), whose 4th field is the root of the mount inside the hierarchy
    (not "/" for nested or cgroupns mounts, and starting with "/.." when the cgroup is
    outside the mount: rejected, like libnvidia-container's find_device_cgroup_path()).

cgroup v1 (devices.allow)
    One rule per write(2) to devices.allow: the kernel parses one rule per write
    (devcgroup_update_access() in security/device_cgroup.c).  Undo writes the rule to
    devices.deny.  In a default-deny cgroup (what every runtime sets up) the kernel keeps
    exceptions per (type, major, minor) and ORs the access bits, so we read devices.list
    first and write only the access bits that are new: undo then removes exactly those
    and leaves whatever the runtime had granted.

cgroup v2 (eBPF, see bpf.py for why prepend)
    Like libnvidia-container (nvcgo ebpf.go) and runc (cgroups/devices/ebpf_linux.go):
    BPF_PROG_QUERY lists the device programs attached to the cgroup itself; for each we
    read its instructions back, prepend our allow blocks, load the result and swap it in.
    Unlike libnvidia-container, which detaches the old program and then attaches the new
    one (a window in which the container has no device policy), we swap atomically:
    - the runtime attached with BPF_F_ALLOW_MULTI (runc, crun): attach with
      BPF_F_ALLOW_MULTI | BPF_F_REPLACE and replace_bpf_fd = the old program, as runc
      does when it updates its own filter; the kernel swaps the entry in place;
    - the runtime attached without flags (one program only, e.g. older runtimes): attach
      with the same flags, which replaces that single program in place.
    The kernel refuses a flags change while programs are attached (EPERM in
    __cgroup_bpf_attach(), kernel/bpf/cgroup.c), hence "the same flags".  With no program
    attached the cgroup allows every device already, so there is nothing to do.
    Undo swaps the old program back the same way.

Only root in the initial user namespace may do any of this; needs_cgroup_rules() says
whether the caller is that (a rootless launch leaves device access to the runtime, the
way `no-cgroups = true` does for NVIDIA's toolkit).
"""
from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable, Iterable

from nvlaunch.plan import bpf
from nvlaunch.core.consts import (
    BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, BPF_F_REPLACE, BPF_PROG_TYPE_CGROUP_DEVICE,
)
from nvlaunch.plan.devices import DeviceRule, normalize_access, parse_v1_line
from nvlaunch.core.errors import CgroupError
from nvlaunch.core.records import record
from nvlaunch.host.view import HostView, is_initial_root
from nvlaunch.kernel.real import REAL

class _Log:
    """Debug lines on stderr with NVLAUNCH_DEBUG=1 (the logging module costs a hook more
    to import than its whole cgroup step), or into `sink` (the hook's own log, which
    also keeps NVLAUNCH_DEBUG_FILE) when the caller sets one.  Warnings always reach
    stderr."""
    sink = None

    def debug(self, fmt: str, *args) -> None:
        msg = "cgroup: " + (fmt % args)
        if self.sink is not None:
            self.sink(msg)
        elif os.environ.get("NVLAUNCH_DEBUG") == "1":
            import sys
            sys.stderr.write("nvlaunch: debug: " + msg + "\n")

    def warning(self, fmt: str, *args) -> None:
        import sys
        msg = "cgroup: " + (fmt % args)
        sys.stderr.write("nvlaunch: warning: " + msg + "\n")
        if self.sink is not None:
            self.sink("warning: " + msg, file_only=True)


log = _Log()

LICENSE = "Apache"            # what runc, crun and libnvidia-container load theirs with
QUERY_START_IDS = 64          # BPF_PROG_QUERY id slots first tried (runc: 64)
QUERY_MAX_IDS = 64 << 10
LOG_START = 64 << 10          # verifier log sizes tried after a failed load
LOG_MAX = 16 << 20

_HINTS = {
    errno.EPERM: "loading or attaching cgroup device programs needs CAP_SYS_ADMIN "
                 "(and CAP_BPF) in the initial user namespace; an LSM may also refuse it",
    errno.EACCES: "an LSM (SELinux, AppArmor) or a locked-down kernel refused access",
    errno.ENOENT: "the cgroup or one of its device programs went away meanwhile "
                  "(did the container exit, or its runtime update the rules?)",
}


@record
class CgroupTarget:
    """The cgroup directory whose device policy we change: v1 devices or v2 unified."""
    version: int
    path: str


# ---- where is the cgroup ---------------------------------------------------------

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
    for line in text.splitlines():
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
    SOURCE SUPEROPTS"; the optional fields end at the lone "-"."""
    out = []
    for line in text.splitlines():
        fields = line.split()
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
    try:
        with open(cg_file) as f:
            v1, v2 = parse_proc_cgroup(f.read())
        with open(mi_file) as f:
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


# ---- undo ------------------------------------------------------------------------

class Undo:
    """What allow_devices() changed.  `undo()` reverts it (newest change first);
    `close()` keeps it and releases the program fds.  Both are idempotent."""

    def __init__(self, target: CgroupTarget, kernel=REAL):
        self.target = target
        self.kernel = kernel
        self.changes: list[str] = []     # human-readable, for --dry-run style reports
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._fds: list[int] = []

    def _add(self, what: str, revert: Callable[[], None]) -> None:
        self.changes.append(what)
        self._steps.append((what, revert))

    def undo(self) -> None:
        errors = []
        while self._steps:
            what, revert = self._steps.pop()
            try:
                revert()
            except OSError as err:
                errors.append(f"undo {what}: {err.strerror or err}")
        self.close()
        if errors:
            raise CgroupError(f"cgroup {self.target.path}: " + "; ".join(errors))

    def close(self) -> None:
        self._steps.clear()
        while self._fds:
            fd = self._fds.pop()
            try:
                self.kernel.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # In a `with` block: an exception reverts, a normal exit keeps the rules.
        if exc_type is None:
            self.close()
        else:
            _undo_quietly(self)     # the exception in flight is the one to report
        return False


# ---- allow -----------------------------------------------------------------------

def allow_devices(target: CgroupTarget, rules: Iterable[DeviceRule], kernel=REAL) -> Undo:
    """Allow `rules` (allow rules only) in the cgroup `target`; returns the Undo.

    Fails as a whole: on error everything done so far is reverted and CgroupError,
    naming the cgroup and the errno text, is raised.
    """
    rules = tuple(rules)
    for rule in rules:
        if not rule.allow:
            raise ValueError(f"allow_devices got a deny rule: {rule.to_v1_line()}")
    undo = Undo(target, kernel)
    if not rules:
        return undo
    try:
        if target.version == 1:
            _allow_v1(target.path, rules, kernel, undo)
        elif target.version == 2:
            _allow_v2(target.path, rules, kernel, undo)
        else:
            raise ValueError(f"cgroup version {target.version}")
    except _StepFailed as failed:
        _undo_quietly(undo)
        err = failed.err
        raise CgroupError(f"cgroup {target.path}: {failed.what}: {err.strerror or err}",
                          _HINTS.get(err.errno)) from err
    except BaseException:
        _undo_quietly(undo)
        raise
    return undo


def _undo_quietly(undo: Undo) -> None:
    try:
        undo.undo()
    except CgroupError as err:     # the first error is the one to report
        log.warning("%s", err)


class _StepFailed(Exception):
    """An OSError plus the step it happened in ("write 'c 195:0 rw' to .../devices.allow")."""

    def __init__(self, what: str, err: OSError):
        super().__init__(what)
        self.what, self.err = what, err


# -- v1

def _read_v1_list(path: str) -> list[DeviceRule]:
    with open(path) as f:
        return [parse_v1_line(ln) for ln in f.read().splitlines() if ln.strip()]


def _allow_v1(path: str, rules: tuple[DeviceRule, ...], kernel, undo: Undo) -> None:
    allow, deny = f"{path}/devices.allow", f"{path}/devices.deny"
    try:
        current = _read_v1_list(f"{path}/devices.list")
    except OSError as err:
        raise _StepFailed(f"read {path}/devices.list", err) from err
    # devices.list prints just "a *:* rwm" for a default-allow cgroup and hides its deny
    # exceptions (devcgroup_seq_show()); then an allow write removes such a hidden
    # exception, and its undo (a deny write) adds one, which may be more than was there.
    default_allow = any(r.type == "a" for r in current)
    granted: dict[tuple, set[str]] = {}
    for r in current:
        granted.setdefault(r.key, set()).update(r.access)
    for rule in rules:
        if default_allow:
            access = normalize_access(rule.access)
        else:
            access = normalize_access(set(rule.access) - granted.get(rule.key, set()))
            if not access:
                log.debug("%s: %s already allowed", path, rule.to_v1_line())
                continue
        line = DeviceRule(rule.type, rule.major, rule.minor, access).to_v1_line()
        try:
            kernel.write_file(allow, line)
        except OSError as err:
            raise _StepFailed(f"write {line!r} to {allow}", err) from err
        granted.setdefault(rule.key, set()).update(access)
        undo._add(f"allow {line}", lambda line=line: kernel.write_file(deny, line))


# -- v2

def _query(kernel, cg_fd: int) -> tuple[int, list[int]]:
    """BPF_PROG_QUERY with a growing id buffer: the kernel answers ENOSPC when the
    programs do not fit (__cgroup_bpf_query() in kernel/bpf/cgroup.c)."""
    size = QUERY_START_IDS
    while True:
        try:
            return kernel.bpf_prog_query(cg_fd, BPF_CGROUP_DEVICE, size)
        except OSError as err:
            if err.errno != errno.ENOSPC or size >= QUERY_MAX_IDS:
                raise _StepFailed("query attached device programs", err) from err
            size *= 4


def load_device_program(insns: bytes, kernel=REAL) -> int:
    """BPF_PROG_LOAD a device filter; returns its fd or raises OSError.  As crun's
    libcrun_ebpf_load() does it:
    - EPERM on a kernel that still charges BPF memory to RLIMIT_MEMLOCK (before 5.11;
      newer ones use the memory cgroup) -> raise the limit once and retry;
    - any other failure -> retry with a verifier log, growing it while the kernel
      says ENOSPC (log too small), so the error carries the verifier's reason.
    """
    log_size = 0
    raised_memlock = False
    while True:
        try:
            return kernel.bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, insns, LICENSE, log_size)
        except OSError as err:
            if err.errno == errno.EPERM and not raised_memlock:
                raised_memlock = True
                try:
                    inf = resource.RLIM_INFINITY
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
                except (OSError, ValueError):
                    raise err from None
                continue
            if log_size == 0:
                log_size = LOG_START
                continue
            if err.errno == errno.ENOSPC and log_size < LOG_MAX:
                log_size *= 4
                continue
            raise


def _allow_v2(path: str, rules: tuple[DeviceRule, ...], kernel, undo: Undo) -> None:
    try:
        cg_fd = kernel.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _StepFailed(f"open {path}", err) from err
    undo._fds.append(cg_fd)
    attach_flags, ids = _query(kernel, cg_fd)
    if not ids:
        # No program on this cgroup: every device is allowed as far as it is concerned
        # (an ancestor's programs still apply, and we cannot change those).
        log.debug("%s: no device program attached; all devices allowed already", path)
        return
    if attach_flags & BPF_F_ALLOW_MULTI:
        flags = BPF_F_ALLOW_MULTI | BPF_F_REPLACE
    else:
        flags = attach_flags       # single program: re-attaching replaces it
    for prog_id in ids:
        what = f"device program id {prog_id}"
        try:
            old_fd = kernel.bpf_prog_get_fd_by_id(prog_id)
        except OSError as err:
            # NVIDIA skips programs it may not open (EPERM/EACCES from an LSM); such a
            # program would still deny our devices, so say so instead.
            raise _StepFailed(f"open {what}", err) from err
        undo._fds.append(old_fd)
        try:
            old = kernel.bpf_prog_xlated_insns(old_fd)
        except OSError as err:
            raise _StepFailed(f"read instructions of {what}", err) from err
        try:
            new = bpf.prepend_rules(rules, old)
        except ValueError as err:
            raise CgroupError(f"cgroup {path}: cannot extend {what}: {err}") from err
        try:
            new_fd = load_device_program(new, kernel)
        except OSError as err:
            raise _StepFailed(f"load the extended {what}", err) from err
        undo._fds.append(new_fd)
        replace = old_fd if flags & BPF_F_REPLACE else 0
        try:
            kernel.bpf_prog_attach(new_fd, cg_fd, BPF_CGROUP_DEVICE, flags, replace)
        except OSError as err:
            raise _StepFailed(f"attach in place of {what}", err) from err
        back = new_fd if flags & BPF_F_REPLACE else 0
        undo._add(f"replace {what}",
                  lambda o=old_fd, b=back: kernel.bpf_prog_attach(o, cg_fd, BPF_CGROUP_DEVICE,
                                                                 flags, b))
        log.debug("%s: %s replaced by a program with %d more rules", path, what, len(rules))


__all__ = ["CgroupTarget", "Undo", "allow_devices", "find_cgroup", "needs_cgroup_rules",
           "load_device_program", "parse_proc_cgroup", "parse_mountinfo"]
