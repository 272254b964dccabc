"""`run`'s mount tree (exec.runroot) over a test directory with the recording fake kernel:
the layer it lays out, the mounts it asks for in order, the bind policy applied once, and
that the rootfs itself is never written.  No root needed: nothing is really mounted."""
from __future__ import annotations

import os

import pytest

from nvlaunch.core import consts as C
from nvlaunch.core.errors import DiscoveryError, MountError, UsageError
from nvlaunch.exec.runroot import BASE_DEVICES, Layout, RunConfig, UserBind, build_root, plan_steps
from nvlaunch.plan.records import (IF_ABSENT, OPTIONAL, BindDevice, BindDir, BindFile, Plan, Symlink,
                                   Tmpfs, WriteFile)
from tests.conftest import tree_snapshot
from tests.fakes import FakeKernel

LIBDIR = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture
def world(tmp_path):
    """A rootfs whose library directory is an absolute link (resolved inside the root,
    never on the host), a host tree with driver files, and a staging directory.  The
    Layout sees host paths as they are (no /oldroot: nothing pivots here)."""
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "etc", "opt/libs", "usr/lib", "tmp", "proc", "dev", "sys", "work"):
        (rootfs / d).mkdir(parents=True)
    os.chmod(rootfs / "tmp", 0o1777)
    os.symlink("/opt/libs", rootfs / LIBDIR.lstrip("/"))
    (rootfs / "bin/sh").write_text("#!\n")
    host = tmp_path / "host"
    (host / "gpus/0000:06:00.0").mkdir(parents=True)
    (host / "libcuda.so.580").write_bytes(b"\x7fELF")
    (host / "nvidia0").write_text("")              # stands in for the device node
    stage = tmp_path / "stage"
    for d in ("upper", "work", "newroot"):
        (stage / d).mkdir(parents=True)
    return rootfs, host, Layout(str(stage), "")


def plan_for(host, extra=()):
    return Plan(entries=(
        BindDevice(str(host / "nvidia0"), "/dev/nvidia0", 195, 0),
        BindFile(str(host / "libcuda.so.580"), f"{LIBDIR}/libcuda.so.580"),
        Symlink("libcuda.so.580", f"{LIBDIR}/libcuda.so.1"),
        BindDir(str(host / "missing-socket"), "/run/nvidia-persistenced/socket", readonly=False,
                recursive=False, policy=OPTIONAL),
        Tmpfs("/proc/driver/nvidia"),
        WriteFile("/proc/driver/nvidia/version", b"NVRM version: 580\n", 0o444),
        BindDir(str(host / "gpus/0000:06:00.0"), "/proc/driver/nvidia/gpus/0000:06:00.0",
                recursive=False),
    ) + tuple(extra), devices=(), ldcache=())


def build(world, plan, **cfg):
    rootfs, host, layout = world
    kernel = FakeKernel()
    config = RunConfig(rootfs=str(rootfs), argv=("/bin/sh",), plan=plan, **cfg)
    build_root(config, kernel, layout, rootless=True)
    return kernel, layout


def test_layer_mounts_and_pivot(world):
    rootfs, host, _ = world
    before = tree_snapshot(str(rootfs))
    k, layout = build(world, plan_for(host), workdir="/work")
    new, upper = layout.new, layout.upper
    # the upper layer: mount points at the paths the rootfs's own links lead to
    assert os.path.isfile(f"{upper}/opt/libs/libcuda.so.580")
    assert os.readlink(f"{upper}/opt/libs/libcuda.so.1") == "libcuda.so.580"
    assert not os.path.lexists(f"{upper}/run/nvidia-persistenced")   # optional, absent: nothing made
    assert os.stat(f"{upper}/tmp").st_mode & 0o7777 == 0o1777
    mounts = k.mounts()
    overlay = next(c for c in mounts if c[0] == "mount" and c[1][2] == "overlay")
    assert overlay[1][1] == new
    assert overlay[1][4] == (f"lowerdir={rootfs},upperdir={upper},"
                             f"workdir={layout.work},userxattr")
    binds = [(src, dst, flags) for name, (src, dst, flags) in
             [c for c in mounts if c[0] == "bind_mount"]]
    # the plan's binds, each onto the resolved path in the new root, with the plan's flags
    assert (str(host / "libcuda.so.580"), f"{new}/opt/libs/libcuda.so.580",
            C.MS_NOSUID | C.MS_NODEV | C.MS_RDONLY) in binds
    assert (str(host / "nvidia0"), f"{new}/dev/nvidia0", C.MS_NOSUID | C.MS_NOEXEC) in binds
    gpu_dir = f"{new}/proc/driver/nvidia/gpus/0000:06:00.0"
    assert (str(host / "gpus/0000:06:00.0"), gpu_dir, C.MS_NOSUID | C.MS_NODEV | C.MS_RDONLY) in binds
    assert not any("missing-socket" in src for src, _, _ in binds)
    # /proc/driver/nvidia: a tmpfs on the nearest existing directory, the rest made in it
    assert ("mount", ("tmpfs", f"{new}/proc/driver", "tmpfs",
                      C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, "mode=0755")) in mounts
    with open(f"{new}/proc/driver/nvidia/version", "rb") as f:
        assert f.read() == b"NVRM version: 580\n"
    # order: overlay, proc, sys, dev ..., plan binds, then into the new root
    names = [(c[0], c[1][2]) if c[0] == "mount" else (c[0],) for c in mounts]
    assert names.index(("mount", "overlay")) < names.index(("mount", "proc")) \
        < names.index(("bind_mount",))
    assert k.calls[-5:] == [("chdir", (new,)), ("pivot_root", (".", ".")),
                            ("umount2", (".", C.MNT_DETACH)), ("chdir", ("/",)),
                            ("chdir", ("/work",))]
    assert tree_snapshot(str(rootfs)) == before          # the rootfs is never written


def test_readonly_puts_the_layer_below(world):
    rootfs, host, _ = world
    k, layout = build(world, plan_for(host), readonly=True)
    overlay = next(c for c in k.mounts() if c[0] == "mount" and c[1][2] == "overlay")
    assert overlay[1][4] == f"lowerdir={layout.upper}:{rootfs},userxattr"


def test_net_none_mounts_a_fresh_sysfs(world):
    rootfs, host, _ = world
    k, layout = build(world, Plan(), net="none")
    assert ("mount", ("sysfs", f"{layout.new}/sys", "sysfs",
                      C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, None)) in k.mounts()
    assert not any(c[0] == "bind_mount" and c[1][1] == f"{layout.new}/sys" for c in k.mounts())


def test_user_binds_after_the_plan(world, tmp_path):
    rootfs, host, _ = world
    data = tmp_path / "data"
    data.mkdir()
    k, layout = build(world, plan_for(host), binds=(UserBind(str(data), "/data", True),))
    assert os.path.isdir(f"{layout.upper}/data")
    last_bind = [c for c in k.mounts() if c[0] == "bind_mount"][-1]
    assert last_bind == ("bind_mount", (str(data), f"{layout.new}/data",
                                        C.MS_REC | C.MS_RDONLY))


def test_missing_bind_source_fails_before_any_mount(world, tmp_path):
    rootfs, host, _ = world
    with pytest.raises(UsageError, match="--bind"):
        build(world, Plan(), binds=(UserBind(str(tmp_path / "nope"), "/data"),))


def test_a_failed_bind_names_source_target_and_flags(world):
    rootfs, host, layout = world
    k = FakeKernel()
    base = sum(os.path.exists("/dev/" + d) for d in BASE_DEVICES)
    k.fail_on("bind_mount", base + 2)       # the first plan bind, after /sys and the base devices
    cfg = RunConfig(rootfs=str(rootfs), argv=("/bin/sh",), plan=plan_for(host))
    with pytest.raises(MountError) as exc:
        build_root(cfg, k, layout, rootless=True)
    assert "dst=/dev/nvidia0" in str(exc.value) and "MS_BIND" in str(exc.value)
    assert exc.value.errno == 1


def test_bind_policy_is_applied_once_in_plan_steps(world):
    rootfs, host, _ = world
    layout = Layout("", "")
    required = BindFile(str(host / "gone.so"), f"{LIBDIR}/gone.so")
    with pytest.raises(DiscoveryError, match="gone.so"):
        plan_steps(Plan(entries=(required,)), layout)
    optional = BindFile(str(host / "gone.so"), f"{LIBDIR}/gone.so", policy=OPTIONAL)
    assert plan_steps(Plan(entries=(optional,)), layout) == []
    unsettled = BindFile(str(host / "libcuda.so.580"), f"{LIBDIR}/libm.so.6", policy=IF_ABSENT)
    with pytest.raises(ValueError, match="if-absent"):
        plan_steps(Plan(entries=(unsettled,)), layout)
    steps = plan_steps(plan_for(host), layout)
    assert [(s.dst, s.kind, s.late) for s in steps] == [
        ("/dev/nvidia0", "file", True), (f"{LIBDIR}/libcuda.so.580", "file", False),
        (f"{LIBDIR}/libcuda.so.1", "link", False), ("/proc/driver/nvidia", "tmpfs", True),
        ("/proc/driver/nvidia/version", "data", True),
        ("/proc/driver/nvidia/gpus/0000:06:00.0", "dir", True)]
