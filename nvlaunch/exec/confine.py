"""What a root `run` container may not reach, as tables: the /proc and /sys paths it sees
read-only or not at all, and the capabilities it keeps.

Without a user namespace the container's root is the host's root, so everything the
kernel does not namespace must be kept out of reach, the way runc's default spec does
(and docker's and podman's): host sysctls under /proc/sys, the magic SysRq trigger, the
kernel's memory image and keyrings, firmware tables.  A rootless container needs none of
this: the host's files there belong to a root it is not.  `--privileged` turns it off.

Devices: the container keeps no CAP_MKNOD, and every filesystem nvlaunch mounts for it
(the overlay root, /dev, /dev/shm) is nodev, so a device node shipped in the rootfs or
made inside cannot be opened; the nodes the plan and the user's --bind give are bind
mounts of the host's, which keep the flags of the host's /dev.
"""
from __future__ import annotations

import os

from nvlaunch.core import consts as C
from nvlaunch.exec.mounts import bind, mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.kernel.protocol import Kernel

# runc's and docker's default readonlyPaths and maskedPaths (moby's oci/defaults.go).
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
# The bounding set of a root container: runc's default set without CAP_MKNOD.
CONTAINER_CAPABILITIES = (
    "chown", "dac_override", "fsetid", "fowner", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)
_RO = C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC


def confine_proc_sys(kernel: Kernel, new: str, dev_null: str) -> None:
    """READONLY_PATHS bound read-only onto themselves, MASKED_PATHS hidden (a file under
    the host's /dev/null at `dev_null`, a directory under an empty read-only tmpfs), in
    the tree at `new`.  Only what exists is touched (the kernel decides what /proc has)."""
    for path in READONLY_PATHS:
        where = new + path
        if os.path.lexists(where):
            bind(kernel, where, where, C.MS_REC | _RO, path, path)
    for path in MASKED_PATHS:
        where = new + path
        if os.path.isdir(where):
            mount(kernel, "tmpfs", where, "tmpfs", _RO, "size=0,mode=0555", shown_target=path)
        elif os.path.lexists(where):
            bind(kernel, dev_null, where, 0, "/dev/null", path)


def capability_numbers() -> set[int]:
    return {C.CAPABILITIES[name] for name in CONTAINER_CAPABILITIES}
