"""The security suite's shared pieces: the kernel tier's rootfs and fake-host fixtures,
and `host_state()`, a snapshot of what a hostile rootfs must never change on the host.

    before = host_state(extra=[target_dir])
    ... attack ...
    assert host_state(extra=[target_dir]) == before

What it holds: the mount table (this namespace's mountinfo, mount ids left out), the
values of the host sysctls a container could reach through /proc/sys, every cgroup
directory and the device rules of cgroup v1 (v2 keeps them in BPF programs attached to
cgroup directories: the directory set and their attached program counts stand in), the
processes that run nvlaunch code, the names directly under /tmp, /run and /dev/shm, and
each `extra` directory as a full tree snapshot (names, modes, sizes, link targets, mtimes).
"""
from __future__ import annotations

import os

from tests.conftest import mounts_snapshot, tree_snapshot
from tests.kernel.conftest import fake, hostdir, make_rootfs, rootfs, world_dir  # noqa: F401

# Host sysctls that are not namespaced: writing one from a container changes the host.
SYSCTLS = ("kernel/hostname", "kernel/domainname", "kernel/core_pattern", "kernel/modprobe",
           "kernel/panic", "kernel/printk", "kernel/randomize_va_space", "kernel/sysrq",
           "kernel/pid_max", "vm/overcommit_memory", "vm/drop_caches", "fs/protected_symlinks",
           "fs/protected_hardlinks", "net/core/somaxconn")
LISTED = ("/tmp", "/run", "/dev/shm", "/dev")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("latin-1")
    except OSError:
        return None


def _cgroups() -> tuple:
    out = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        dirnames.sort()
        rules = _read(os.path.join(dirpath, "devices.list"))
        out.append((dirpath, rules))
    return tuple(out)


def _nvlaunch_processes() -> frozenset:
    me = os.getpid()
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        cmd = _read(f"/proc/{pid}/cmdline") or ""
        if "nvlaunch" in cmd and "pytest" not in cmd:
            found.add((pid, cmd))
    return frozenset(found)


def host_state(extra=()) -> dict:
    return {
        "mounts": mounts_snapshot(),
        "sysctls": {s: _read("/proc/sys/" + s) for s in SYSCTLS},
        "cgroups": _cgroups(),
        "processes": _nvlaunch_processes(),
        "listed": {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in LISTED},
        "trees": {d: tree_snapshot(d) for d in extra},
    }


def diff_state(before: dict, after: dict) -> list:
    """Human-readable differences, for assertion messages."""
    out = []
    for key in before:
        if before[key] != after[key]:
            b, a = before[key], after[key]
            if isinstance(b, dict):
                for k in set(b) | set(a):
                    if b.get(k) != a.get(k):
                        out.append(f"{key}[{k}]: {b.get(k)!r:.300} -> {a.get(k)!r:.300}")
            elif isinstance(b, (list, tuple, frozenset)):
                out.append(f"{key}: gone {sorted(set(b) - set(a), key=str)[:5]!r:.400}, "
                           f"new {sorted(set(a) - set(b), key=str)[:5]!r:.400}")
            else:
                out.append(f"{key}: changed")
    return out
