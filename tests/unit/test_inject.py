"""inject.py with a recording fake kernel: the exact mounts it asks for, that a hostile
rootfs cannot move them onto the host, and that a failure removes what it created."""
import os

import pytest

from nvlaunch.core import consts as C
from nvlaunch.core.errors import MountError
from nvlaunch.exec.inject import inject
from nvlaunch.plan.records import BindDevice, BindFile, Plan, Symlink
from tests.conftest import tree_snapshot
from tests.fakes import FakeKernel


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    # Hostile: the library directory is an absolute link that would lead out of the root
    # if it were followed on the host.
    os.symlink(str(outside), root / "usr/lib/x86_64-linux-gnu")
    src = tmp_path / "libcuda.so.580.159.04"
    src.write_bytes(b"\x7fELF")
    return root, outside, src


def plan_for(src):
    lib = "/usr/lib/x86_64-linux-gnu"
    return Plan(entries=(BindDevice("/dev/null", "/dev/nvidia0", 195, 0),
                         BindFile(str(src), f"{lib}/libcuda.so.580.159.04"),
                         Symlink("libcuda.so.580.159.04", f"{lib}/libcuda.so.1")))


def test_mounts_stay_inside_a_hostile_root(layout):
    root, outside, src = layout
    k = FakeKernel()
    inject(plan_for(src), str(root), k)
    # each bind, then a remount of the new mount (reopened) with the flags added
    assert k.mount_names() == ["bind_mount", "remount_bind", "bind_mount", "remount_bind"]
    (_, (dev_src, dev_dst, f0)), (_, (dev_re, dev_flags)), \
        (_, (lib_src, lib_dst, f1)), (_, (lib_re, lib_flags)) = k.mounts()
    assert dev_src == "/dev/null" and dev_dst == dev_re == str(root / "dev/nvidia0")
    assert f0 == f1 == 0
    assert dev_flags == C.MS_NOSUID | C.MS_NOEXEC
    # the absolute link was re-rooted: the mount point is inside the rootfs
    assert lib_dst == lib_re == str(root / str(outside).lstrip("/") / "libcuda.so.580.159.04")
    assert lib_flags == C.MS_NOSUID | C.MS_NODEV | C.MS_RDONLY
    assert os.listdir(outside) == []
    assert os.readlink(root / str(outside).lstrip("/") / "libcuda.so.1") == "libcuda.so.580.159.04"


def test_failure_removes_what_was_created(layout):
    root, outside, src = layout
    before = tree_snapshot(str(root))
    k = FakeKernel()
    k.fail_on("remount_bind", 2)
    with pytest.raises(MountError) as exc:
        inject(plan_for(src), str(root), k)
    assert "libcuda.so.580.159.04" in str(exc.value) and "Operation not permitted" in str(exc.value)
    assert tree_snapshot(str(root)) == before
    assert os.listdir(outside) == []


def test_missing_required_file_is_an_error_before_any_mount(layout, tmp_path):
    root, _, _ = layout
    k = FakeKernel()
    plan = Plan(entries=(BindFile(str(tmp_path / "gone.so"), "/usr/lib/gone.so"),))
    with pytest.raises(Exception) as exc:
        inject(plan, str(root), k)
    assert "gone.so" in str(exc.value) and k.changes() == []
