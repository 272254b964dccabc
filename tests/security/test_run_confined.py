"""A root `nvlaunch run` container is confined as runc's default spec confines one
(exec.confine): host sysctls, SysRq, /proc/kcore and friends out of reach, no CAP_MKNOD,
no device node of the rootfs usable; `--privileged` is the documented way out.  Each
attack runs for real as root on this kernel and the host is checked unchanged after."""
from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import needs_root
from tests.security.conftest import diff_state, host_state

pytestmark = needs_root("a root container, mknod")

CAP_MKNOD = 27


def sh(nvl, rootfs, script, *opts):
    proc = nvl("run", "--no-gpu", *opts, rootfs, "/bin/sh", "-c", script)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _host(path):
    with open(path) as f:
        return f.read()


# (what the container tries, a script that exits 0 only if the attack failed)
ATTACKS = [
    ("host sysctl", "! echo pwned > /proc/sys/kernel/domainname 2>/dev/null"),
    ("sysrq trigger", "! echo h > /proc/sysrq-trigger 2>/dev/null"),
    ("kernel memory image", "test ! -s /proc/kcore && ! grep -q . /proc/kcore 2>/dev/null"),
    ("kernel keyrings", "! grep -q . /proc/keys 2>/dev/null"),
    ("timer list", "! grep -q . /proc/timer_list 2>/dev/null"),
    ("firmware tables", "test -z \"$(ls /sys/firmware 2>/dev/null)\""),
    ("mknod a block device", "! mknod /tmp/disk b 7 0 2>/dev/null"),
    ("mknod a char device", "! mknod /tmp/mem c 1 1 2>/dev/null"),
    ("remount /proc/sys rw", "! mount -o remount,rw /proc/sys 2>/dev/null"),
    ("remount / with dev", "! mount -o remount,dev / 2>/dev/null"),
    ("mount a new procfs", "mkdir -p /tmp/p && ! mount -t proc proc /tmp/p 2>/dev/null"),
    ("write /sys", "! echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null"),
]


@pytest.mark.parametrize("name,script", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_refused_host_unchanged(nvl_root, rootfs, name, script):
    before = host_state()
    domain = _host("/proc/sys/kernel/domainname")
    proc = sh(nvl_root, rootfs, script)
    assert proc.returncode == 0, f"{name}: the container could do it: {proc.stderr}"
    assert _host("/proc/sys/kernel/domainname") == domain
    assert not diff_state(before, host_state())


def test_device_node_shipped_in_rootfs_is_unusable(nvl_root, rootfs):
    """A hostile image ships /disk as the host's loop0 (or any disk): nodev on the
    overlay makes open(2) fail, whatever the node's mode."""
    os.mknod(os.path.join(rootfs, "disk"), 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(os.path.join(rootfs, "mem"), 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    proc = sh(nvl_root, rootfs, "! head -c1 /disk 2>/dev/null && ! head -c1 /mem 2>/dev/null "
              "&& head -c1 /dev/zero | od -An -c | grep -q '\\\\0'")
    assert proc.returncode == 0, proc.stderr


def test_capability_set_has_no_mknod(nvl_root, rootfs):
    out = sh(nvl_root, rootfs, "grep -E '^(CapBnd|CapEff):' /proc/self/status").stdout
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert caps, out
    for value in caps.values():
        assert not int(value, 16) & (1 << CAP_MKNOD), caps


def test_readonly_and_masked_mounts_are_there(nvl_root, rootfs):
    out = sh(nvl_root, rootfs, "cat /proc/self/mountinfo").stdout
    points = {}
    for line in out.splitlines():
        fields = line.split()
        points[fields[4]] = fields[5].split(",")
    from nvlaunch.exec.confine import MASKED_PATHS, READONLY_PATHS
    assert "ro" in points["/proc/sys"], points.get("/proc/sys")
    for path in READONLY_PATHS:
        if os.path.exists(path):          # what this kernel has
            assert "ro" in points[path], (path, points.get(path))
    masked = [p for p in MASKED_PATHS if os.path.exists(p)]
    assert "/proc/keys" in masked and "/sys/firmware" in masked
    for path in masked:
        assert path in points, path
    assert "nodev" in points["/"] and "nodev" in points["/dev"]


def test_privileged_opts_out(nvl_root, rootfs):
    """--privileged: every capability, /proc/sys as the kernel mounts it, and the rootfs
    allows device nodes (shown by the mount flags; nothing is written to the host)."""
    out = sh(nvl_root, rootfs, "grep CapBnd /proc/self/status; cat /proc/self/mountinfo",
             "--privileged").stdout
    bnd = next(line for line in out.splitlines() if line.startswith("CapBnd"))
    assert int(bnd.split()[1], 16) & (1 << CAP_MKNOD)
    mounts = {line.split()[4]: line.split()[5] for line in out.splitlines()[1:]}
    assert "/proc/sys" not in mounts and "/proc/kcore" not in mounts
    assert "nodev" not in mounts["/"].split(",")


def test_rootless_needs_no_masks_and_still_refuses(nvl_user, rootfs):
    """Without root the host's files are out of reach anyway: the same attacks fail."""
    for name, script in ATTACKS[:3] + ATTACKS[6:8]:
        proc = sh(nvl_user, rootfs, script)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_pid1_cannot_be_reached_from_the_container(nvl, rootfs):
    """PID 1 holds the writable layer's fd and full capabilities: the container's
    processes, with their trimmed set, can neither read its fd links, open them, nor
    reach its root (and PID 1 is not dumpable besides), root or rootless."""
    script = ("for f in /proc/1/fd/*; do readlink $f >/dev/null 2>&1 && echo link-$f; "
              "cat $f </dev/null >/dev/null 2>&1 && echo open-$f; done; "
              "ls /proc/1/root/ >/dev/null 2>&1 && echo root-reachable; "
              "readlink /proc/self/fd/0 >/dev/null && echo own-fds-fine")
    proc = sh(nvl, rootfs, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["own-fds-fine"], proc.stdout
