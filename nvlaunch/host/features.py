"""What this host supports: the single capability probe (`nvlaunch features`), and the
hint for a host that restricts unprivileged user namespaces.  Reads only."""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    def read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    mounts = read("/proc/self/mountinfo") or ""
    fstypes = {line.split(" - ")[1].split()[0] for line in mounts.splitlines() if " - " in line}
    cg = "hybrid" if {"cgroup", "cgroup2"} <= fstypes else ("v2" if "cgroup2" in fstypes else
                                                             "v1" if "cgroup" in fstypes else "none")
    return {
        "euid": os.geteuid(),
        "cgroup": cg,
        "unprivileged_userns": read("/proc/sys/kernel/unprivileged_userns_clone") != "0"
        and read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") != "1"
        and read("/proc/sys/user/max_user_namespaces") not in (None, "0"),
        "newuidmap": os.path.exists("/usr/bin/newuidmap"),
        "overlay": "overlay" in (read("/proc/filesystems") or ""),
        "kernel": os.uname().release,
    }


# Kernel settings that refuse or cripple unprivileged user namespaces, and the fix.
USERNS_SYSCTLS = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0",
     "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile "
     "granting `userns` to nvlaunch's python (Ubuntu 24.04)"),
)


def userns_restriction() -> str | None:
    """A hint naming the setting that restricts unprivileged user namespaces, if one does."""
    for path, bad, fix in USERNS_SYSCTLS:
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return (f"unprivileged user namespaces are restricted here "
                            f"({path[len('/proc/sys/'):].replace('/', '.')} = {bad}); fix: {fix}")
        except OSError:
            continue
    return None
