"""The fake GPU host (tests/fakehost.py) is shaped like the reference H200 host.

These check the fixture itself, so other tests can trust it: SONAMEs and links, a real
ld.so.cache with the compat decoy first, the device-node stand-ins made without root, /proc
files in the driver's format, the fake libcuda / NVML / nvidia-smi behaviour, and the
container rootfs.  No root needed: the real device nodes (mknod) are checked in
tests/kernel/test_fakehost_nodes.py; chroot runs in a user namespace when not root.
"""
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from tests import fakehost
from tests.conftest import chroot_cmd, is_root
from tests.fakehost import (DRIVER_LIBS, build_fake_host, build_rootfs, default_gpus, parse_devices,
                            parse_kv, probe_binary)


@pytest.fixture
def host(tmp_path):
    return build_fake_host(str(tmp_path / "host"))


def run(argv, env=None, **kw):
    full = dict(os.environ, **(env or {}))
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=30, **kw)


def ld_cache(root):
    """[(name, path)] of ROOT/etc/ld.so.cache, in cache order."""
    out = run(["ldconfig", "-p", "-C", os.path.join(root, "etc/ld.so.cache")]).stdout
    return re.findall(r"^\s+(\S+) \(.*?\) => (\S+)$", out, re.M)


# --- GPU table -------------------------------------------------------------------------------

def test_default_gpu_table_two():
    gpus = default_gpus(2)
    assert [(g.index, g.bus_id, g.minor) for g in gpus] == [
        (0, "0000:06:00.0", 1), (1, "0000:07:00.0", 0)]
    for g in gpus:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", g.uuid)
        assert g.model == "NVIDIA H200"
    assert default_gpus(2) == gpus                                  # deterministic


def test_default_gpu_table_many():
    gpus = default_gpus(4)
    assert [g.minor for g in gpus] == [1, 0, 3, 2]
    assert [g.bus_id for g in gpus] == sorted(g.bus_id for g in gpus)
    assert [g.minor for g in default_gpus(3)] == [1, 0, 2]
    every = default_gpus(fakehost.MAX_GPUS)
    assert len({g.uuid[:12] for g in every}) == fakehost.MAX_GPUS   # distinct first 8 hex
    assert [g.minor for g in default_gpus(2, minors=[5, 9])] == [5, 9]
    with pytest.raises(ValueError):
        default_gpus(2, minors=[1, 1])
    with pytest.raises(ValueError):
        default_gpus(fakehost.MAX_GPUS + 1)


# --- driver tree -----------------------------------------------------------------------------

def soname(path):
    out = run(["readelf", "-d", path]).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[(.+)\]", out)
    return m and m.group(1)


def test_driver_libraries_sonames_and_links(host):
    ver = host.driver_version
    for stem, n in DRIVER_LIBS:
        real = os.path.join(host.lib_dir, f"{stem}.so.{ver}")
        assert stat.S_ISREG(os.lstat(real).st_mode), real
        if n is None:
            assert soname(real) == f"{stem}.so.{ver}"
            assert os.readlink(os.path.join(host.lib_dir, f"{stem}.so")) == f"{stem}.so.{ver}"
        else:
            assert soname(real) == f"{stem}.so.{n}"
            assert os.readlink(os.path.join(host.lib_dir, f"{stem}.so.{n}")) == f"{stem}.so.{ver}"
            assert os.readlink(os.path.join(host.lib_dir, f"{stem}.so")) == f"{stem}.so.{n}"
    # duplicates in /usr/lib are absolute links; lib is merged /usr
    assert os.readlink(host.path("/usr/lib/libcuda.so.1")) == "/usr/local/nvidia/lib64/libcuda.so.1"
    assert os.readlink(host.path("/lib")) == "usr/lib"
    assert os.readlink(host.path("/usr/bin/nvidia-smi")) == "/usr/local/nvidia/bin/nvidia-smi"
    decoy = host.path("/usr/local/cuda-13.0/compat/libcuda.so.580.95.05")
    assert soname(decoy) == "libcuda.so.1"
    assert soname(host.path("/usr/local/cuda-13.0/targets/x86_64-linux/lib/stubs/libcuda.so"))
    for name in fakehost.DRIVER_BINS:
        assert os.access(os.path.join(host.bin_dir, name), os.X_OK)
    fw = host.path(f"/lib/firmware/nvidia/{host.driver_version}")
    assert sorted(os.listdir(fw)) == ["gsp_ga10x.bin", "gsp_tu10x.bin"]
    assert "libEGL_nvidia.so.0" in open(host.path("/usr/share/glvnd/egl_vendor.d/10_nvidia.json")).read()
    assert "libGLX_nvidia.so.0" in open(host.path("/usr/share/vulkan/icd.d/nvidia_icd.json")).read()
    assert open(host.path("/etc/OpenCL/vendors/nvidia.icd")).read() == "libnvidia-opencl.so.1\n"


def test_ld_cache_has_decoy_first_and_duplicates(host):
    entries = ld_cache(host.root)
    cuda = [p for n, p in entries if n == "libcuda.so.1"]
    assert cuda == ["/usr/local/cuda-13.0/compat/libcuda.so.1",
                    "/usr/local/nvidia/lib64/libcuda.so.1", "/lib/libcuda.so.1"]
    assert [p for n, p in entries if n == "libnvidia-ml.so.1"] == [
        "/usr/local/nvidia/lib64/libnvidia-ml.so.1", "/lib/libnvidia-ml.so.1"]
    assert [p for n, p in entries if n == "libnvidia-tls.so.580.159.04"] == [
        "/usr/local/nvidia/lib64/libnvidia-tls.so.580.159.04"]
    names = {n for n, _ in entries}
    assert {"libfoo.so.1", "libcudart.so.13", "libOpenCL.so.1"} <= names       # must NOT be injected
    assert not any("stubs" in p for _, p in entries)


def test_without_decoy(tmp_path):
    h = build_fake_host(str(tmp_path / "h"), with_decoy=False, driver_version="570.86.15",
                        cuda_version=12080)
    cuda = [p for n, p in ld_cache(h.root) if n == "libcuda.so.1"]
    assert cuda[0] == "/usr/local/nvidia/lib64/libcuda.so.1"
    assert not os.path.exists(h.path("/usr/local/cuda-13.0/compat"))
    assert os.path.exists(os.path.join(h.lib_dir, "libcuda.so.570.86.15"))


# --- /dev ------------------------------------------------------------------------------------

NODES = ("/dev/nvidiactl", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
         "/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap2",
         "/dev/nvidia-caps-imex-channels/channel0")


def _no_mknod(*args, **kw):
    raise PermissionError(1, "Operation not permitted")


@pytest.mark.parametrize("stand_ins", [False, True])
def test_nodes_without_mknod(tmp_path, monkeypatch, stand_ins):
    """Where mknod is refused (not root; forced here so root checks it too): empty regular
    files, or symlinks to /dev/null, which stat() as a character device."""
    monkeypatch.setattr(os, "mknod", _no_mknod)
    h = build_fake_host(str(tmp_path / "h"), stand_ins=stand_ins)
    assert not h.real_nodes and h.stand_in_nodes == stand_ins
    paths = list(NODES) + [g.dev_path for g in h.gpus]
    paths += [f"/dev/dri/card{g.index}" for g in h.gpus] + [f"/dev/dri/renderD{128 + g.index}" for g in h.gpus]
    for rel in paths:
        p = h.path(rel)
        if stand_ins:
            assert os.readlink(p) == fakehost.STAND_IN_NODE, rel
            assert stat.S_ISCHR(os.stat(p).st_mode), rel
        else:
            assert stat.S_ISREG(os.lstat(p).st_mode) and os.path.getsize(p) == 0, rel
    for g in h.gpus:                                 # the by-path links lead to them either way
        assert os.readlink(h.path(f"/dev/dri/by-path/pci-{g.bus_id}-card")) == f"../card{g.index}"
    cap = h.add_node("/dev/nvidia-caps/nvidia-cap9", fakehost.MAJOR_CAPS, 9, 0o444)
    assert cap == h.path("/dev/nvidia-caps/nvidia-cap9")
    assert os.path.islink(cap) == stand_ins and stat.S_ISREG(os.lstat(cap).st_mode) != stand_ins
    # /dev/null itself is left as it was (a stand-in gets no chmod/chown)
    assert stat.S_IMODE(os.stat("/dev/null").st_mode) == 0o666


def test_rewrite_keeps_the_mode(host):
    host.rewrite("/proc/driver/nvidia/version", "garbage\n")
    p = host.path("/proc/driver/nvidia/version")
    assert open(p).read() == "garbage\n"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444


# --- /proc -----------------------------------------------------------------------------------

def parse_information(text):
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_information_files(host):
    for g in host.gpus:
        text = open(host.path(f"/proc/driver/nvidia/gpus/{g.bus_id}/information")).read()
        info = parse_information(text)
        assert info["Model"] == "NVIDIA H200"
        assert info["GPU UUID"] == g.uuid
        assert info["Bus Location"] == g.bus_id
        assert int(info["Device Minor"]) == g.minor
        assert info["GPU Firmware"] == host.driver_version
        assert info["GPU Excluded"] == "No"
        assert text.startswith("Model: \t\t NVIDIA H200\nIRQ:   \t\t ")     # the driver's layout
        assert f"\nDevice Minor: \t {g.minor}\n" in text


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = next((p for p in (os.path.join(_REPO, "shared/reference/gpu-host-h200.txt"),
                              os.path.join(_REPO, "../shared/reference/gpu-host-h200.txt"))
                  if os.path.exists(p)), "")


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="reference host listing not here")
def test_proc_texts_match_the_reference_host():
    ref = open(REFERENCE).read()
    gpu = fakehost.FakeGpu(index=0, minor=0, uuid="GPU-ec1c5bba-ae21-942b-3385-24458321be50",
                           bus_id="0000:00:06.0")
    assert fakehost.information_text(gpu, "580.159.04") in ref
    assert fakehost.version_text("580.159.04") in ref
    assert fakehost.PARAMS_TEXT in ref


def test_proc_driver_files(host):
    p = host.path
    version = open(p("/proc/driver/nvidia/version")).read()
    assert re.search(r"Kernel Module for x86_64\s+(\S+)", version).group(1) == host.driver_version
    assert version.splitlines()[0].endswith("(nixbld@)  ")
    assert "\nModifyDeviceFiles: 1\n" in open(p("/proc/driver/nvidia/params")).read()
    assert os.path.exists(p("/proc/driver/nvidia/registry"))
    devices = open(p("/proc/devices")).read()
    for line in ("195 nvidia", "195 nvidiactl", "238 nvidia-uvm", "241 nvidia-caps",
                 "242 nvidia-caps-imex-channels", "226 drm"):
        assert f"\n{line}\n" in devices
    minors = dict(l.split() for l in open(p("/proc/driver/nvidia-caps/mig-minors")))
    assert minors["config"] == "1" and minors["monitor"] == "2"
    assert minors["gpu0/gi0/access"] == "3" and minors["gpu0/gi0/ci0/access"] == "4"
    assert minors["gpu1/gi0/access"] == "138" and minors["fabric-imex-mgmt"] == "4323"
    caps = p("/proc/driver/nvidia/capabilities")
    assert open(f"{caps}/mig/config").read() == \
        "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n"
    assert open(f"{caps}/mig/monitor").read().startswith("DeviceFileMinor: 2\n")
    assert open(f"{caps}/fabric-imex-mgmt").read().startswith("DeviceFileMinor: 4323\n")
    for g in host.gpus:
        assert os.path.isdir(f"{caps}/gpu{g.minor}/mig")


# --- fake driver behaviour, on the host --------------------------------------------------------

def test_probe_loads_real_libcuda(host):
    """Also without root: the fake drivers take a node that opens (an empty file here) as
    present, like ENXIO from a real node without a driver."""
    env = {"LD_LIBRARY_PATH": host.lib_dir, **host.fake_sysroot_env()}
    out = parse_kv(run([probe_binary(), "dlopen", "libcuda.so.1"], env).stdout)
    assert out["dlopen"] == "ok" and out["version"] == host.driver_version
    assert out["realpath"] == os.path.join(host.lib_dir, f"libcuda.so.{host.driver_version}")
    assert out["cuda"] == "13000" and out["cuInit"] == "0" and out["count"] == "2"
    assert out["device0"] == out["device1"] == "NVIDIA H200"
    # no /dev/nvidiactl (the real host's /dev here): CUDA_ERROR_NO_DEVICE
    out = parse_kv(run([probe_binary(), "dlopen", "libcuda.so.1"],
                       {"LD_LIBRARY_PATH": host.lib_dir}).stdout)
    assert out["cuInit"] == "100"
    # the compat decoy says who it is and refuses
    compat = host.path("/usr/local/cuda-13.0/compat")
    out = parse_kv(run([probe_binary(), "dlopen", "libcuda.so.1"],
                       {"LD_LIBRARY_PATH": compat, **host.fake_sysroot_env()}).stdout)
    assert out["version"] == "580.95.05" and out["cuInit"] == "803"
    r = run([probe_binary(), "dlopen", "libnope.so.1"])
    assert r.returncode == 2 and "dlopen=fail" in r.stdout


def test_nvidia_smi_lists_present_gpus_in_pci_order(tmp_path):
    h = build_fake_host(str(tmp_path / "h"), gpus=4)
    env = {"LD_LIBRARY_PATH": h.lib_dir, **h.fake_sysroot_env()}
    smi = os.path.join(h.bin_dir, "nvidia-smi")
    r = run([smi, "-L"], env)
    assert r.returncode == 0
    assert r.stdout.splitlines() == [f"GPU {g.index}: NVIDIA H200 (UUID: {g.uuid})" for g in h.gpus]
    os.unlink(h.path(h.gpus[1].dev_path))                   # "not injected"
    r = run([smi, "-L"], env)
    assert [l.split("UUID: ")[1][:-1] for l in r.stdout.splitlines()] == \
        [h.gpus[0].uuid, h.gpus[2].uuid, h.gpus[3].uuid]
    assert "Driver Version: 580.159.04" in run([smi], env).stdout
    os.unlink(h.path("/dev/nvidiactl"))
    r = run([smi, "-L"], env)
    assert r.returncode != 0 and r.stdout.startswith("NVIDIA-SMI has failed")


def test_mode_denied_node_gives_cuinit_999():
    """EACCES (node mode) is reported like the cgroup's EPERM: cuInit 999 and a reason.
    As root: root:video 0660 nodes, opened as nobody (not in video).  Without root the
    nodes are our own files: mode 0 denies their owner."""
    d = tempfile.mkdtemp(prefix="nvlaunch-fakehost-")
    try:
        os.chmod(d, 0o755)
        h = build_fake_host(os.path.join(d, "h"), video_group_nodes=True)
        env = {"LD_LIBRARY_PATH": h.lib_dir, **h.fake_sysroot_env()}
        if is_root():
            kw = {"user": 65534, "group": 65534, "extra_groups": []}
        else:
            assert os.lstat(h.path("/dev/nvidiactl")).st_uid == os.geteuid()
            os.chmod(h.path("/dev/nvidiactl"), 0)
            kw = {}
        r = run([probe_binary(), "dlopen", "libcuda.so.1"], env, **kw)
        assert parse_kv(r.stdout)["cuInit"] == "999"
        assert "nvidiactl" in r.stderr
    finally:
        shutil.rmtree(d)


def test_build_is_fast_after_the_first(tmp_path):
    build_fake_host(str(tmp_path / "warm"))
    t = time.perf_counter()
    build_fake_host(str(tmp_path / "again"), gpus=4)
    assert time.perf_counter() - t < 1.0


def test_env(host):
    assert host.env() == {"NVLAUNCH_DRIVER_ROOT": host.root, "NVLAUNCH_DEV_ROOT": host.root,
                          "NVLAUNCH_PROC_ROOT": host.root}


# --- rootfs and the probe inside it --------------------------------------------------------------

@pytest.mark.parametrize("layout", ["debian", "lib64"])
def test_rootfs_runs_shell_and_probe(tmp_path, layout):
    r = build_rootfs(str(tmp_path / "rootfs"), layout=layout)
    assert os.readlink(os.path.join(r, "bin/sh")) == "busybox"
    out = run(chroot_cmd(r, "/bin/sh", "-c", "echo hi"))
    assert out.stdout == "hi\n", out.stderr
    ids = parse_kv(run(chroot_cmd(r, "/usr/bin/probe", "ids")).stdout)
    assert ids["uid"] == "0" and ids["euid"] == "0"
    if layout == "debian":
        assert os.path.isfile(os.path.join(r, "lib/x86_64-linux-gnu/libc.so.6"))
        assert os.path.exists(os.path.join(r, "etc/debian_version"))
    else:
        assert os.readlink(os.path.join(r, "lib64")) == "usr/lib64"
        assert os.path.isfile(os.path.join(r, "usr/lib64/libc.so.6"))
    assert "video:x:44:" in open(os.path.join(r, "etc/group")).read()
    assert "1000" in open(os.path.join(r, "etc/passwd")).read()


def test_parse_helpers():
    text = ("dir /dev/nvidia-caps\n"
            "dev /dev/nvidia-caps/nvidia-cap1 c 241:1 open=EACCES mode=0400 uid=0 gid=0\n"
            "link /dev/dri/by-path/x -> ../card0\n")
    assert parse_devices(text) == {"/dev/nvidia-caps/nvidia-cap1": {
        "type": "c", "major": 241, "minor": 1, "open": "EACCES", "mode": 0o400, "uid": 0, "gid": 0}}
    assert parse_kv("dlopen=ok path=/a version=1\ncuInit=0\ndevice0=NVIDIA H200\n") == {
        "dlopen": "ok", "path": "/a", "version": "1", "cuInit": "0", "device0": "NVIDIA H200"}
    assert parse_kv("dlopen=fail error=x.so: cannot open: No such file")["error"] == \
        "x.so: cannot open: No such file"
