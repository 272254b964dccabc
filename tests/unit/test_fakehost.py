"""The fake GPU host (tests/fakehost.py) is shaped like the reference H200 host.

These check the fixture itself, so other tests can trust it: SONAMEs and links, a real
ld.so.cache with the compat decoy first, device nodes, /proc files in the driver's format,
the fake libcuda / NVML / nvidia-smi behaviour, and the container rootfs.
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
from tests.fakehost import (DRIVER_LIBS, build_fake_host, build_rootfs, default_gpus,
                            parse_devices, parse_kv, probe_binary)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mknod, chroot)")


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

@needs_root
def test_device_nodes(host):
    def node(rel):
        st = os.lstat(host.path(rel))
        assert stat.S_ISCHR(st.st_mode), rel
        return os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_gid

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


@needs_root
def test_video_group_nodes(tmp_path):
    h = build_fake_host(str(tmp_path / "h"), video_group_nodes=True)
    st = os.stat(h.path("/dev/nvidia0"))
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == fakehost._video_gid() != 0


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

@needs_root
def test_probe_loads_real_libcuda(host):
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


@needs_root
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


@needs_root
def test_mode_denied_node_gives_cuinit_999():
    """EACCES (node mode) is reported like the cgroup's EPERM: cuInit 999 and a reason."""
    d = tempfile.mkdtemp(prefix="nvlaunch-fakehost-")
    try:
        os.chmod(d, 0o755)
        h = build_fake_host(os.path.join(d, "h"), video_group_nodes=True)
        env = {"LD_LIBRARY_PATH": h.lib_dir, **h.fake_sysroot_env()}
        r = run([probe_binary(), "dlopen", "libcuda.so.1"], env, user=65534, group=65534,
                extra_groups=[])
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

@needs_root
@pytest.mark.parametrize("layout", ["debian", "lib64"])
def test_rootfs_runs_shell_and_probe(tmp_path, layout):
    r = build_rootfs(str(tmp_path / "rootfs"), layout=layout)
    assert os.readlink(os.path.join(r, "bin/sh")) == "busybox"
    out = run(["chroot", r, "/bin/sh", "-c", "echo hi"])
    assert out.stdout == "hi\n", out.stderr
    ids = parse_kv(run(["chroot", r, "/usr/bin/probe", "ids"]).stdout)
    assert ids["uid"] == "0" and ids["euid"] == "0"
    if layout == "debian":
        assert os.path.isfile(os.path.join(r, "lib/x86_64-linux-gnu/libc.so.6"))
        assert os.path.exists(os.path.join(r, "etc/debian_version"))
    else:
        assert os.readlink(os.path.join(r, "lib64")) == "usr/lib64"
        assert os.path.isfile(os.path.join(r, "usr/lib64/libc.so.6"))
    assert "video:x:44:" in open(os.path.join(r, "etc/group")).read()
    assert "1000" in open(os.path.join(r, "etc/passwd")).read()


@needs_root
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
