"""`nvlaunch run` with GPUs, on a fake host tree shaped like the H200 reference host:
four GPUs whose minors are not in PCI order, a real ld cache whose first libcuda.so.1 is
the CUDA compat decoy, absolute links under /usr/lib.  Run as root, as the test user
(subordinate ids) and as nobody (single-id map)."""
import os
import subprocess

import pytest

from tests.conftest import mounts_snapshot, needs_root, tree_snapshot
from tests.fakehost import SYSLIBS, build_fake_host, build_rootfs, parse_devices, parse_kv

pytestmark = needs_root("mknod, to switch users")

DRIVER = "580.159.04"


@pytest.fixture(scope="module")
def host(world_tmp):
    h = build_fake_host(os.path.join(world_tmp, "gpuhost"), gpus=4)
    subprocess.run(["chmod", "-R", "a+rX", h.root], check=True)
    return h


@pytest.fixture(scope="module")
def rootfs(world_tmp):
    r = build_rootfs(os.path.join(world_tmp, "gpurootfs"))
    subprocess.run(["chmod", "-R", "a+rX", r], check=True)
    return r


def run(nvl, host, rootfs, *args, script):
    return nvl("run", *args, rootfs, "/bin/sh", "-c", script, env=host.env())


def test_selected_gpu_only(nvl, host, rootfs):
    """--gpus 1 gives the node of the GPU at PCI index 1 (its minor, not 1) and no other."""
    gpu = host.gpus[1]
    before = tree_snapshot(rootfs)
    r = run(nvl, host, rootfs, "--gpus", "1",
            script="probe devices; probe dlopen libcuda.so.1; nvidia-smi -L; echo vis=$NVIDIA_VISIBLE_DEVICES")
    assert r.returncode == 0, r.stderr
    devs = parse_devices(r.stdout)
    gpu_nodes = {p for p in devs if p[len("/dev/nvidia"):].isdigit()}
    assert gpu_nodes == {f"/dev/nvidia{gpu.minor}"}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= set(devs)
    assert all(d["open"] == "ENXIO" for d in devs.values()), devs
    kv = parse_kv(r.stdout)
    assert kv["dlopen"] == "ok"
    assert kv["version"] == DRIVER          # never the compat decoy 580.95.05
    assert kv["cuInit"] == "0" and kv["count"] == "1"
    assert f"GPU 0: NVIDIA H200 (UUID: {gpu.uuid})" in r.stdout
    assert kv["vis"] == gpu.uuid
    assert tree_snapshot(rootfs) == before


def test_all_gpus_and_selection_forms(nvl_user, host, rootfs):
    g = host.gpus
    for spec, want in (("all", g), (f"{g[2].uuid},{g[0].uuid[:12]}", [g[2], g[0]]),
                       (g[3].bus_id, [g[3]]), ("0,0,1", [g[0], g[1]])):
        r = run(nvl_user, host, rootfs, "--gpus", spec, script="probe devices; echo vis=$NVIDIA_VISIBLE_DEVICES")
        assert r.returncode == 0, (spec, r.stderr)
        nodes = {p for p in parse_devices(r.stdout) if p[len("/dev/nvidia"):].isdigit()}
        assert nodes == {f"/dev/nvidia{x.minor}" for x in want}, spec
        assert parse_kv(r.stdout)["vis"] == ",".join(x.uuid for x in want), spec


def test_none_gives_driver_but_no_gpu(nvl, host, rootfs):
    r = run(nvl, host, rootfs, "--gpus", "none", script="probe devices; probe dlopen libcuda.so.1")
    devs = parse_devices(r.stdout)
    assert "/dev/nvidiactl" in devs
    assert not [p for p in devs if p[len("/dev/nvidia"):].isdigit()]
    kv = parse_kv(r.stdout)
    assert kv["dlopen"] == "ok" and kv["version"] == DRIVER and kv["count"] == "0"


@pytest.mark.parametrize("args", [["--gpus", "void"], ["--no-gpu"], []])
def test_void_injects_nothing(nvl_user, host, rootfs, args):
    r = run(nvl_user, host, rootfs, *args, script="probe devices; ls /proc/driver; probe dlopen libcuda.so.1")
    assert r.returncode == 2       # probe: dlopen failed
    assert parse_devices(r.stdout) == {}
    assert "dlopen=fail" in r.stdout and "nvidia" not in r.stdout


def test_env_selects_when_no_gpus_option(nvl_user, host, rootfs):
    r = run(nvl_user, host, rootfs, "--env", "NVIDIA_VISIBLE_DEVICES=2",
            "--env", "NVIDIA_DRIVER_CAPABILITIES=utility", script="probe devices; nvidia-smi -L")
    assert r.returncode == 0, r.stderr
    devs = parse_devices(r.stdout)
    assert f"/dev/nvidia{host.gpus[2].minor}" in devs
    assert "/dev/nvidia-uvm" not in devs      # uvm comes with compute only
    assert host.gpus[2].uuid in r.stdout


@pytest.mark.parametrize("spec,needle", [("7", "7"), ("GPU-ffffffff", "GPU-ffffffff"),
                                         ("0000:99:00.0", "0000:99:00.0"), ("bogus", "bogus")])
def test_bad_selection(nvl_user, host, rootfs, spec, needle):
    mounts = mounts_snapshot()
    before = tree_snapshot(rootfs)
    r = run(nvl_user, host, rootfs, "--gpus", spec, script="true")
    assert r.returncode == 125
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvlaunch: error:") and needle in lines[0], r.stderr
    assert mounts_snapshot() == mounts and tree_snapshot(rootfs) == before


def test_bad_capability(nvl_user, host, rootfs):
    r = run(nvl_user, host, rootfs, "--gpus", "0", "--capabilities", "compute,warp", script="true")
    assert r.returncode == 125 and "warp" in r.stderr and "Traceback" not in r.stderr


def test_lib64_layout_uses_ld_cache(nvl_user, host, world_tmp_path):
    """A Fedora-like rootfs: libraries go to /usr/lib64, found through the updated cache."""
    r64 = build_rootfs(os.path.join(world_tmp_path, "r64"), layout="lib64")
    subprocess.run(["chmod", "-R", "a+rX", r64], check=True)
    r = run(nvl_user, host, r64, "--gpus", "0", script="probe dlopen libcuda.so.1")
    kv = parse_kv(r.stdout)
    assert kv.get("dlopen") == "ok", r.stdout + r.stderr
    assert kv["path"].startswith("/usr/lib64/") and kv["version"] == DRIVER


def _minimal_rootfs(path: str) -> str:
    """A rootfs with libc and the loader but none of libm.so.6 and libpthread.so.0, which
    the driver needs (like one made from a program's `ldd` alone): no ld cache either."""
    r = build_rootfs(path)
    for name in SYSLIBS + ("libdl.so.2", "librt.so.1"):
        p = os.path.join(r, "lib/x86_64-linux-gnu", name)
        if os.path.lexists(p):
            os.unlink(p)
    os.unlink(os.path.join(r, "etc/ld.so.cache"))
    subprocess.run(["chmod", "-R", "a+rX", r], check=True)
    return r


@pytest.mark.parametrize("minimal", [True, False], ids=["rootfs-lacks-them", "rootfs-has-them"])
def test_system_libraries_only_where_missing(nvl_user, host, world_tmp_path, rootfs, minimal):
    """libcuda and nvidia-smi need libm.so.6 and libpthread.so.0 (DT_NEEDED).  A rootfs
    without them gets the host's (or libcuda could not load); one with them keeps its own
    and gets no copy."""
    root = _minimal_rootfs(os.path.join(world_tmp_path, "min")) if minimal else rootfs
    before = tree_snapshot(root)
    r = run(nvl_user, host, root, "--gpus", "0",
            script="probe dlopen libcuda.so.1; nvidia-smi -L; probe dlopen libm.so.6; "
                   "ls /usr/lib/x86_64-linux-gnu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cuInit=0" in r.stdout and "GPU 0: NVIDIA H200" in r.stdout, r.stdout
    libm = [line for line in r.stdout.splitlines() if "realpath=" in line and "libm" in line]
    injected = {"libm.so.6", "libpthread.so.0"} & set(r.stdout.split())
    if minimal:
        assert injected == {"libm.so.6", "libpthread.so.0"}, r.stdout
        assert "path=/usr/lib/x86_64-linux-gnu/libm.so.6" in libm[0], libm
    else:
        assert not injected, r.stdout
        assert "realpath=/lib/x86_64-linux-gnu/libm.so.6" in libm[0], libm
    assert tree_snapshot(root) == before


def test_list_marks_system_libraries(nvl_user, host):
    import json
    r = nvl_user("list", "--gpus", "0", "--json", env=host.env())
    data = json.loads(r.stdout)
    marked = {os.path.basename(f["path"]) for f in data["files"] if f.get("only_if_absent")}
    assert marked == set(SYSLIBS), data["files"]


def test_proc_driver_view(nvl_user, host, rootfs):
    r = run(nvl_user, host, rootfs, "--gpus", "3",
            script="ls /proc/driver/nvidia/gpus; grep ModifyDeviceFiles /proc/driver/nvidia/params")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [host.gpus[3].bus_id, "ModifyDeviceFiles:", "0"]


@pytest.fixture(scope="module")
def video_host(world_tmp):
    h = build_fake_host(os.path.join(world_tmp, "videohost"), gpus=2, video_group_nodes=True)
    subprocess.run(["chmod", "-R", "a+rX", h.root], check=True)
    return h


def test_group_only_nodes_stay_reachable(nvl_user, nvl_nobody, video_host, rootfs):
    """Nodes 0660 root:video: the caller's supplementary groups are kept inside."""
    import grp
    if "nvltest" not in grp.getgrnam("video").gr_mem:
        pytest.skip("nvltest is not in group video (scripts/bootstrap.sh adds it)")
    r = run(nvl_user, video_host, rootfs, "--gpus", "0", script="probe devices")
    devs = parse_devices(r.stdout)
    assert devs[f"/dev/nvidia{video_host.gpus[0].minor}"]["open"] == "ENXIO", r.stdout
    r = run(nvl_nobody, video_host, rootfs, "--gpus", "0", script="probe devices")
    devs = parse_devices(r.stdout)
    assert devs[f"/dev/nvidia{video_host.gpus[0].minor}"]["open"] == "EACCES", r.stdout


def test_list_json(nvl_user, host):
    import json
    r = nvl_user("list", "--gpus", "1", "--json", env=host.env())
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["path"] for d in data["devices"] if d["path"][11:].isdigit()] == [f"/dev/nvidia{host.gpus[1].minor}"]
    assert any(f["path"].endswith(f"libcuda.so.{DRIVER}") for f in data["files"])
    assert not any("580.95.05" in f["host_path"] or "/cuda-13.0/" in f["host_path"] for f in data["files"])


def test_missing_essential_library_is_an_error(nvl_user, world_tmp_path, rootfs):
    """No libcuda for compute: one error line naming it, nothing started; an optional
    library (OpenCL) missing is left out without error."""
    broken = build_fake_host(os.path.join(world_tmp_path, "host"), gpus=1)
    subprocess.run(["chmod", "-R", "a+rX", broken.root], check=True)
    os.unlink(os.path.join(broken.lib_dir, f"libcuda.so.{DRIVER}"))
    r = run(nvl_user, broken, rootfs, "--gpus", "0", script="echo started")
    assert r.returncode == 125 and "started" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "libcuda.so.1" in lines[0] and "compute" in lines[0], r.stderr
    r = run(nvl_user, broken, rootfs, "--gpus", "0", "--capabilities", "utility",
            script="nvidia-smi -L")
    assert r.returncode == 0 and broken.gpus[0].uuid in r.stdout, r.stderr


def test_graphics_display_bring_drm_and_modeset_nodes(nvl_user, host, rootfs):
    """graphics/display: the selected GPU's /dev/dri card and render nodes (matched by PCI
    bus id, not index) and nvidia-modeset; no other GPU's DRM nodes."""
    gpu = host.gpus[2]
    r = run(nvl_user, host, rootfs, "--gpus", "2", "--capabilities", "graphics,display",
            script="probe devices; ls /usr/share/glvnd/egl_vendor.d")
    assert r.returncode == 0, r.stderr
    devs = parse_devices(r.stdout)
    dri = sorted(p for p in devs if p.startswith("/dev/dri/"))
    assert dri == [f"/dev/dri/card{gpu.index}", f"/dev/dri/renderD{128 + gpu.index}"], dri
    assert "/dev/nvidia-modeset" in devs and devs["/dev/nvidia-modeset"]["open"] == "ENXIO"
    assert "/dev/nvidia-uvm" not in devs          # no compute asked for
    assert "10_nvidia.json" in r.stdout


def test_imex_channels_on_request(nvl_user, host, rootfs):
    r = run(nvl_user, host, rootfs, "--gpus", "0", "--env", "NVIDIA_IMEX_CHANNELS=0", script="probe devices")
    devs = parse_devices(r.stdout)
    assert devs["/dev/nvidia-caps-imex-channels/channel0"]["open"] == "ENXIO", r.stdout + r.stderr
    r = run(nvl_user, host, rootfs, "--gpus", "0", script="probe devices")
    assert not [p for p in parse_devices(r.stdout) if "imex" in p]
    r = run(nvl_user, host, rootfs, "--gpus", "0", "--env", "NVIDIA_IMEX_CHANNELS=7", script="true")
    assert r.returncode == 125 and "channel7" in r.stderr
