"""Device cgroup rules for a running container process: find its cgroup, widen its rules.

Used as root by the OCI hook (and by `run` for its own containers): the runtime has
already set a deny-by-default device policy, and the GPU nodes nvlaunch adds must be
allowed in it or open(2) fails with EPERM ("Failed to initialize NVML: Unknown Error").

Finding the cgroup is host.cgroups (find_cgroup).

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

from nvlaunch.core.consts import (
    BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, BPF_F_REPLACE, BPF_PROG_TYPE_CGROUP_DEVICE,
)
from nvlaunch.core.errors import CgroupError, hint_for
from nvlaunch.core.log import log
from nvlaunch.host.cgroups import CgroupTarget, find_cgroup, needs_cgroup_rules
from nvlaunch.kernel.real import REAL
from nvlaunch.plan.devices import DeviceRule, normalize_access, parse_v1_line, rules_for_nodes
from nvlaunch.plan.records import Plan

TYPE_CHECKING = False   # `collections.abc` costs 2 ms; annotations only
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Literal

    from nvlaunch.kernel.protocol import Kernel

LICENSE = "Apache"            # what runc, crun and libnvidia-container load theirs with
QUERY_START_IDS = 64          # BPF_PROG_QUERY id slots first tried (runc: 64)
QUERY_MAX_IDS = 64 << 10
LOG_START = 64 << 10          # verifier log sizes tried after a failed load
LOG_MAX = 16 << 20



# ---- where is the cgroup ---------------------------------------------------------


# ---- undo ------------------------------------------------------------------------

class Undo:
    """What allow_devices() changed.  `undo()` reverts it (newest change first);
    `close()` keeps it and releases the program fds.  Both are idempotent."""

    def __init__(self, target: CgroupTarget, kernel: Kernel = REAL):
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

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        # In a `with` block: an exception reverts, a normal exit keeps the rules.
        if exc_type is None:
            self.close()
        else:
            _undo_quietly(self)     # the exception in flight is the one to report
        return False


# ---- allow -----------------------------------------------------------------------

def allow_devices(target: CgroupTarget, rules: Iterable[DeviceRule], kernel: Kernel = REAL) -> Undo:
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
                          hint_for(err.errno, "bpf"), errno=err.errno) from err
    except BaseException:
        _undo_quietly(undo)
        raise
    return undo


def _undo_quietly(undo: Undo) -> None:
    try:
        undo.undo()
    except CgroupError as err:     # the first error is the one to report
        log.warning(f"cgroup: {err}")


class _StepFailed(Exception):
    """An OSError plus the step it happened in ("write 'c 195:0 rw' to .../devices.allow")."""

    def __init__(self, what: str, err: OSError):
        super().__init__(what)
        self.what, self.err = what, err


# -- v1

def _read_v1_list(path: str) -> list[DeviceRule]:
    with open(path) as f:
        return [parse_v1_line(ln) for ln in f.read().splitlines() if ln.strip()]


def _allow_v1(path: str, rules: tuple[DeviceRule, ...], kernel: Kernel, undo: Undo) -> None:
    allow, deny = f"{path}/devices.allow", f"{path}/devices.deny"
    try:
        current = _read_v1_list(f"{path}/devices.list")
    except OSError as err:
        raise _StepFailed(f"read {path}/devices.list", err) from err
    # devices.list prints just "a *:* rwm" for a default-allow cgroup and hides its deny
    # exceptions (devcgroup_seq_show()); then an allow write removes such a hidden
    # exception, and its undo (a deny write) adds one, which may be more than was there.
    default_allow = any(r.type == "a" for r in current)
    granted: dict[tuple[str, int | None, int | None], set[str]] = {}
    for r in current:
        granted.setdefault(r.key, set()).update(r.access)
    for rule in rules:
        if default_allow:
            access = normalize_access(rule.access)
        else:
            access = normalize_access(set(rule.access) - granted.get(rule.key, set()))
            if not access:
                log(f"cgroup: {path}: {rule.to_v1_line()} already allowed")
                continue
        line = DeviceRule(rule.type, rule.major, rule.minor, access).to_v1_line()
        try:
            kernel.write_file(allow, line)
        except OSError as err:
            raise _StepFailed(f"write {line!r} to {allow}", err) from err
        granted.setdefault(rule.key, set()).update(access)

        def revert(line: str = line) -> None:
            kernel.write_file(deny, line)
        undo._add(f"allow {line}", revert)


# -- v2

def _query(kernel: Kernel, cg_fd: int) -> tuple[int, list[int]]:
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


def load_device_program(insns: bytes, kernel: Kernel = REAL) -> int:
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
                import resource     # (a C module loaded from disk: only on this path)
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


def _allow_v2(path: str, rules: tuple[DeviceRule, ...], kernel: Kernel, undo: Undo) -> None:
    try:
        cg_fd = kernel.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _StepFailed(f"open {path}", err) from err
    undo._fds.append(cg_fd)
    attach_flags, ids = _query(kernel, cg_fd)
    if not ids:
        # No program on this cgroup: every device is allowed as far as it is concerned
        # (an ancestor's programs still apply, and we cannot change those).
        log(f"cgroup: {path}: no device program attached; all devices allowed already")
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
        from nvlaunch.plan import bpf      # cgroup v2 only: v1 hosts never load it
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

        def swap_back(o: int = old_fd, b: int = back) -> None:
            kernel.bpf_prog_attach(o, cg_fd, BPF_CGROUP_DEVICE, flags, b)
        undo._add(f"replace {what}", swap_back)
        log(f"cgroup: {path}: {what} replaced by a program with {len(rules)} more rules")


def allow_plan_devices(plan: Plan, pid: int | str, no_cgroups: bool = False) -> Undo | None:
    """Allow the plan's device nodes in the device cgroup of process `pid` ("self": the
    caller's own, as a createContainer hook runs inside the container's cgroup); returns
    the Undo, or None when nothing was (or could be) done: no device nodes, switched off,
    or not root in the initial user namespace (a rootless runtime's own policy decides)."""
    rules = rules_for_nodes(plan.devices)
    if not rules:
        return None
    if no_cgroups:
        log("cgroup: --no-cgroups / NVLAUNCH_NO_CGROUPS: no device rules added")
        return None
    if not needs_cgroup_rules("/"):
        log("cgroup: not root in the initial user namespace (rootless runtime): no device "
            "cgroup writes; device access is what the runtime's own policy allows")
        return None
    target = find_cgroup(pid, "/", "self")
    undo = allow_devices(target, rules)
    log(f"cgroup v{target.version} {target.path}: allowed "
        + ", ".join(r.to_v1_line() for r in rules))
    return undo
