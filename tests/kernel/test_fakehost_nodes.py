"""The fake GPU host's real device nodes (tests/fakehost.py), which only root can make
(mknod): their numbers, modes and groups, ENXIO on open, and a chroot that gets the
driver and some of the nodes by hand, as nvlaunch must.  The rest of the fixture is
checked without root in tests/unit/test_fakehost.py."""
import os
import shutil
import stat

import pytest

from tests import fakehost
from tests.conftest import needs_root
from tests.fakehost import build_fake_host, build_rootfs, parse_devices, parse_kv
from tests.unit.test_fakehost import run   # the same subprocess helper as its unit twin

pytestmark = needs_root("mknod, chroot")


@pytest.fixture
def host(tmp_path):
    return build_fake_host(str(tmp_path / "host"))


def test_device_nodes(host):
    def node(rel):
        st = os.lstat(host.path(rel))
        assert stat.S_ISCHR(st.st_mode), rel
        return os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_gid

    assert host.real_nodes and not host.stand_in_nodes
    assert node("/dev/nvidiactl") == (195, 255, 0o666, 0)
    assert node("/dev/nvidia-modeset") == (195, 254, 0o666, 0)
    assert node("/dev/nvidia-uvm") == (238, 0, 0o666, 0)
    assert node("/dev/nvidia-uvm-tools") == (238, 1, 0o666, 0)
    for g in host.gpus:
        assert node(g.dev_path) == (195, g.minor, 0o666, 0)
        assert node(f"/dev/dri/card{g.index}")[:2] == (226, g.index)
        assert node(f"/dev/dri/renderD{128 + g.index}")[:2] == (226, 128 + g.index)
        assert os.readlink(host.path(f"/dev/dri/by-path/pci-{g.bus_id}-card")) == f"../card{g.index}"
    assert node("/dev/nvidia-caps/nvidia-cap1") == (241, 1, 0o400, 0)
    assert node("/dev/nvidia-caps/nvidia-cap2") == (241, 2, 0o444, 0)
    assert node("/dev/nvidia-caps-imex-channels/channel0")[:2] == (242, 0)
    # the signal the fake driver relies on: no driver behind these majors here
    with pytest.raises(OSError) as err:
        os.close(os.open(host.path("/dev/nvidiactl"), os.O_RDWR))
    assert err.value.errno == 6                                          # ENXIO


def test_stand_ins_only_without_root(tmp_path):
    """stand_ins=True changes nothing for root: the nodes are real."""
    h = build_fake_host(str(tmp_path / "h"), stand_ins=True)
    assert h.real_nodes and not h.stand_in_nodes
    assert not os.path.islink(h.path("/dev/nvidia0"))
    cap = h.add_node("/dev/nvidia-caps/nvidia-cap9", fakehost.MAJOR_CAPS, 9, 0o444)
    st = os.lstat(cap)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(fakehost.MAJOR_CAPS, 9)
    assert stat.S_IMODE(st.st_mode) == 0o444


def test_video_group_nodes(tmp_path):
    h = build_fake_host(str(tmp_path / "h"), video_group_nodes=True)
    st = os.stat(h.path("/dev/nvidia0"))
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == fakehost._video_gid() != 0


def test_chroot_with_injected_driver_sees_gpus(tmp_path):
    """What nvlaunch must achieve, done by hand: the fixture pieces fit together."""
    h = build_fake_host(str(tmp_path / "host"))
    r = build_rootfs(str(tmp_path / "rootfs"))
    libdir = os.path.join(r, "usr/lib/x86_64-linux-gnu")
    for lib in ("libcuda.so.1", "libnvidia-ml.so.1"):
        shutil.copy(os.path.join(h.lib_dir, lib), os.path.join(libdir, lib))
    shutil.copy(os.path.join(h.bin_dir, "nvidia-smi"), os.path.join(r, "usr/bin/nvidia-smi"))
    shutil.copytree(h.path("/proc/driver"), os.path.join(r, "proc/driver"))
    gpu = h.gpus[1]                                          # select only the second GPU
    for rel in ("/dev/nvidiactl", "/dev/nvidia-uvm", gpu.dev_path):
        st = os.stat(h.path(rel))
        node = os.path.join(r, rel.lstrip("/"))
        os.mknod(node, st.st_mode, st.st_rdev)
        os.chmod(node, stat.S_IMODE(st.st_mode))                 # mknod obeys the umask

    devs = parse_devices(run(["chroot", r, "/usr/bin/probe", "devices"]).stdout)
    assert devs[gpu.dev_path] == {"type": "c", "major": 195, "minor": gpu.minor, "open": "ENXIO",
                                  "mode": 0o666, "uid": 0, "gid": 0}
    assert set(devs) == {"/dev/nvidiactl", "/dev/nvidia-uvm", gpu.dev_path}
    out = parse_kv(run(["chroot", r, "/usr/bin/probe", "dlopen", "libcuda.so.1"]).stdout)
    assert out["path"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert out["version"] == h.driver_version and out["cuInit"] == "0" and out["count"] == "1"
    smi = run(["chroot", r, "/usr/bin/nvidia-smi", "-L"])
    assert smi.stdout == f"GPU 0: NVIDIA H200 (UUID: {gpu.uuid})\n"
    assert run(["chroot", r, "/usr/bin/probe", "open", "/dev/nvidia-uvm"]).stdout == \
        "path=/dev/nvidia-uvm open=ENXIO\n"
