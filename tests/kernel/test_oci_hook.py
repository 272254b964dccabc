"""`nvlaunch hook` under real runtimes (runc, crun, podman root and rootless) on a fake GPU host.

The fake host (tests/fakehost.py) has real device nodes with the NVIDIA majors but no driver
behind them: an open(2) the device cgroup allows fails with ENXIO, one it denies with EPERM,
and a node that was not injected gives ENOENT.  The fake libcuda.so.1 in the container
reports version 580.159.04 and cuInit=0 only when the injected nodes are there and allowed.

The hook runs as `WRAPPER nvlaunch hook STAGE`, WRAPPER a two-line script that execs python
-m nvlaunch with PYTHONPATH set (the runtime gives a hook only the env of its entry).

Skips: not root; a runtime that is not installed; crun only runs here in a private mount
namespace without the cgroup v2 mount (this host is hybrid with hugetlb on v2, which crun
refuses: "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"), which
changes nothing on the host.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import REPO, TEST_USER, installed_script, mounts_snapshot, needs_root, tree_snapshot, user_exists
from tests.fakehost import SYSLIBS, build_fake_host, build_rootfs, parse_devices, parse_kv

pytestmark = needs_root("runc, cgroups, mknod")

RUNC, CRUN, PODMAN = shutil.which("runc"), shutil.which("crun"), shutil.which("podman")
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc not installed")
needs_crun = pytest.mark.skipif(CRUN is None, reason="crun not installed")
needs_podman = pytest.mark.skipif(PODMAN is None or RUNC is None, reason="podman or runc not installed")
PODMAN_ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PROBE = "probe devices; probe dlopen libcuda.so.1"
V2_HYBRID = "/sys/fs/cgroup/unified"
PLAN_CACHE_DIR = "/run/nvlaunch"            # nvlaunch's plan cache, as root without XDG_RUNTIME_DIR


def _world_dir(prefix: str, mode: int = 0o755) -> str:
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, mode)
    return d


def write_wrapper(path: str, python: str, pythonpath: str, runtime_dir: str | None = None) -> str:
    """runtime_dir: the hook's XDG_RUNTIME_DIR, where its plan cache goes (for root: not
    the machine's /run/nvlaunch)."""
    xdg = f"XDG_RUNTIME_DIR={runtime_dir} " if runtime_dir else ""
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n{xdg}PYTHONPATH={pythonpath} exec {python} -m nvlaunch \"$@\"\n")
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def moddir():
    d = _world_dir("nvl-hooktest-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def host(moddir):
    return build_fake_host(os.path.join(moddir, "host"))


@pytest.fixture(scope="module")
def wrapper(moddir):
    """The hook executable for runtimes run by root: this venv's python and the repo."""
    xdg = os.path.join(moddir, "xdg")
    os.makedirs(xdg, mode=0o700, exist_ok=True)
    return write_wrapper(os.path.join(moddir, "nvlaunch-hook"), sys.executable, REPO, xdg)


@pytest.fixture
def work():
    d = _world_dir("nvl-bundle-")
    yield d
    subprocess.run(["umount", "-R", "-l", d], capture_output=True)   # defensive; nothing expected
    shutil.rmtree(d, ignore_errors=True)


def hook_entry(wrapper: str, host, stage_arg: str = "prestart", extra_env=()) -> dict:
    # PATH: crun runs createContainer hooks only with one ("executable path not specified")
    env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + [f"{k}={v}" for k, v in host.env().items()]
    env += list(extra_env)
    return {"path": wrapper, "args": ["nvlaunch", "hook", stage_arg], "env": env}


STAGE_KEYS = {"prestart": "prestart", "create-runtime": "createRuntime",
              "create-container": "createContainer"}


def make_bundle(d: str, args, env=(), hooks=None, userns=False, mounts=(), annotations=None,
                rootfs_owner=None, readonly=True) -> str:
    """runc-spec bundle at d with a fresh probe rootfs at d/rootfs (root.path relative)."""
    build_rootfs(os.path.join(d, "rootfs"))
    if rootfs_owner is not None:
        subprocess.run(["chown", "-R", f"{rootfs_owner}:{rootfs_owner}", os.path.join(d, "rootfs")],
                       check=True)
    subprocess.run([RUNC or CRUN, "spec", "--bundle", d] if RUNC else [CRUN, "spec"], cwd=d,
                   check=True, capture_output=True)
    path = os.path.join(d, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["root"]["readonly"] = readonly       # runc spec's default is true
    config["process"]["args"] = list(args)
    config["process"]["env"] = config["process"].get("env", []) + list(env)
    if hooks:
        config["hooks"] = hooks
    if userns:
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["mounts"] = config["mounts"] + list(mounts)
    if annotations:
        config["annotations"] = annotations
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return d


def _runtime_cmd(runtime: str, d: str, *args) -> list:
    cmd = [runtime, "--root", os.path.join(d, "state"), *args]
    if runtime == CRUN and os.path.ismount(V2_HYBRID):
        # crun refuses this hybrid layout; without the v2 mount (in a private mount namespace
        # of its own) it sees plain cgroup v1 and runs.
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"umount -l {V2_HYBRID} && exec \"$@\"", "sh", *cmd]
    return cmd


def _v2_only(cmd: list) -> list:
    """`cmd` in a private mount namespace whose /sys/fs/cgroup is the cgroup2 hierarchy
    alone, as on the reference GPU host (cgroup v2 only): runc then uses cgroup v2 and
    enforces device rules with an eBPF program.  The host's mounts are left as they are."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup "
            "&& exec \"$@\"", "sh", *cmd]


def run_container(d: str, cid: str = "c1", runtime: str | None = None, timeout: int = 60,
                  v2_only: bool = False):
    runtime = runtime or RUNC
    wrap = _v2_only if v2_only else list
    proc = subprocess.run(wrap(_runtime_cmd(runtime, d, "run", "--bundle", d, cid)),
                          capture_output=True, text=True, timeout=timeout, cwd=d)
    subprocess.run(wrap(_runtime_cmd(runtime, d, "delete", "-f", cid)), capture_output=True)
    return proc


def gpu_nodes(devs: dict) -> dict:
    return {p: v for p, v in devs.items() if re.fullmatch(r"/dev/nvidia\d+", p)}


def expect_gpus(out: str, host, indices, open_result="ENXIO"):
    devs = parse_devices(out)
    nodes = gpu_nodes(devs)
    want = {host.gpus[i].dev_path for i in indices}
    assert set(nodes) == want, out
    for path in want:
        assert nodes[path]["open"] == open_result, (path, out)
    assert devs["/dev/nvidiactl"]["open"] == open_result, out
    return devs


def expect_libcuda(out: str):
    kv = parse_kv(out)
    assert kv.get("dlopen") == "ok", out
    assert kv.get("version") == "580.159.04", out
    assert kv.get("cuInit") == "0", out


# ---- runc -----------------------------------------------------------------------------

@needs_runc
@pytest.mark.parametrize("spec,stage,indices", [
    ("1", "prestart", [1]),
    ("all", "prestart", [0, 1]),
    ("0", "create-runtime", [0]),
    ("1", "create-container", [1]),
])
def test_runc_injects_selected_gpus(work, host, wrapper, spec, stage, indices):
    # GPU index 1 has minor 0 on the fake host (minors are swapped pairwise)
    assert host.gpus[1].minor == 0 and host.gpus[0].minor == 1
    make_bundle(work, ["/bin/sh", "-c", PROBE + "; ls /proc/driver/nvidia/gpus"],
                env=[f"NVIDIA_VISIBLE_DEVICES={spec}"],
                hooks={STAGE_KEYS[stage]: [hook_entry(wrapper, host, stage)]})
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, indices)
    expect_libcuda(proc.stdout)
    for i in (0, 1):     # /proc/driver/nvidia shows the selected GPUs only
        assert (host.gpus[i].bus_id in proc.stdout) == (i in indices), proc.stdout


@needs_runc
@pytest.mark.parametrize("stage", ["prestart", "create-runtime", "create-container"])
def test_runc_leaves_no_trace_in_the_rootfs(work, host, wrapper, stage):
    """The hook's mount points, links and ld cache live in tmpfs layers of the container's
    mount namespace: the rootfs is identical after `runc run` and after `runc delete`,
    while the container saw every file (and /etc/hosts-like mounts of the runtime under a
    layered directory stay visible)."""
    hosts = os.path.join(work, "hosts")
    with open(hosts, "w") as f:
        f.write("10.9.8.7 from-the-runtime\n")
    make_bundle(work, ["/bin/sh", "-c", PROBE + "; cat /etc/hosts; nvidia-smi -L; "
                       "ls /etc/ld.so.cache /usr/lib/x86_64-linux-gnu/libcuda.so.1"],
                env=["NVIDIA_VISIBLE_DEVICES=0"],
                hooks={STAGE_KEYS[stage]: [hook_entry(wrapper, host, stage)]},
                mounts=[{"destination": "/etc/hosts", "type": "bind", "source": hosts,
                         "options": ["bind", "ro"]}])
    rootfs = os.path.join(work, "rootfs")
    open(os.path.join(rootfs, "etc/hosts"), "w").close()
    before = tree_snapshot(rootfs)
    with open(os.path.join(rootfs, "etc/ld.so.cache"), "rb") as f:
        cache = f.read()
    state = os.path.join(work, "state")
    proc = subprocess.run([RUNC, "--root", state, "run", "--bundle", work, "c1"],
                          capture_output=True, text=True, timeout=60, cwd=work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0])
    expect_libcuda(proc.stdout)
    assert "from-the-runtime" in proc.stdout and f"UUID: {host.gpus[0].uuid}" in proc.stdout
    assert tree_snapshot(rootfs) == before             # after run, before delete
    subprocess.run([RUNC, "--root", state, "delete", "-f", "c1"], capture_output=True)
    assert tree_snapshot(rootfs) == before
    with open(os.path.join(rootfs, "etc/ld.so.cache"), "rb") as f:
        assert f.read() == cache


@needs_runc
def test_runc_system_libraries_for_a_minimal_rootfs(work, host, wrapper):
    """A rootfs with libc but without libm.so.6 / libpthread.so.0 and no ld cache: the
    hook binds the host's (libcuda and nvidia-smi need them) and lists them in the new
    cache; the rootfs's libc stays its own."""
    make_bundle(work, ["/bin/sh", "-c", "probe dlopen libc.so.6; probe dlopen libcuda.so.1; "
                       "nvidia-smi -L"],
                env=["NVIDIA_VISIBLE_DEVICES=0"], hooks={"prestart": [hook_entry(wrapper, host)]})
    lib = os.path.join(work, "rootfs/lib/x86_64-linux-gnu")
    for name in SYSLIBS:
        os.unlink(os.path.join(lib, name))
    os.unlink(os.path.join(work, "rootfs/etc/ld.so.cache"))
    # Twice on the same rootfs: the first start leaves nothing (the mount points were in
    # the hook's tmpfs layer); before the second, empty files like those an in-place
    # injection leaves (the fallback, or an older nvlaunch) must not pass for the libraries.
    before = tree_snapshot(os.path.join(work, "rootfs"))
    for cid in ("c1", "c2"):
        proc = run_container(work, cid)
        assert proc.returncode == 0, proc.stderr
        expect_libcuda(proc.stdout)
        assert f"GPU 0: NVIDIA H200 (UUID: {host.gpus[0].uuid})" in proc.stdout, proc.stdout
        assert "realpath=/lib/x86_64-linux-gnu/libc.so.6" in proc.stdout, proc.stdout
        if cid == "c1":
            assert tree_snapshot(os.path.join(work, "rootfs")) == before
            for name in SYSLIBS:
                open(os.path.join(work, "rootfs/usr/lib/x86_64-linux-gnu", name), "w").close()


needs_v2 = pytest.mark.skipif(not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
                              and not os.path.ismount(V2_HYBRID), reason="no cgroup v2 here")


@needs_runc
@needs_v2
@pytest.mark.parametrize("cgroup_rules", [True, False], ids=["hook", "no-cgroup-step"])
def test_runc_cgroup_v2_only(work, host, wrapper, cgroup_rules):
    """The GPU host's layout: cgroup v2 alone, runc's device policy an eBPF program.  The
    hook's rules open the selected GPU (ENXIO); without them runc's program denies it
    (EPERM), which proves runc's program was in force and that ours replaced it."""
    dbg = os.path.join(work, "hook-debug.log")
    extra = [f"NVLAUNCH_DEBUG_FILE={dbg}"] + ([] if cgroup_rules else ["NVLAUNCH_NO_CGROUPS=1"])
    make_bundle(work, ["/bin/sh", "-c", PROBE + "; probe open /dev/null; cat /proc/self/cgroup"],
                env=["NVIDIA_VISIBLE_DEVICES=1"],
                hooks={"prestart": [hook_entry(wrapper, host, extra_env=extra)]})
    proc = run_container(work, v2_only=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^0::/\S", proc.stdout, re.M), proc.stdout   # in a v2 cgroup of its own
    expect_gpus(proc.stdout, host, [1], open_result="ENXIO" if cgroup_rules else "EPERM")
    if cgroup_rules:
        expect_libcuda(proc.stdout)
    assert "path=/dev/null open=OK" in proc.stdout, proc.stdout   # runc's own rules hold
    with open(dbg) as f:
        log = f.read()
    # cgroup.py's own line (runc's program swapped for ours) reaches the hook's debug file
    assert ("replaced by a program with" in log) == cgroup_rules, log


@needs_runc
def test_runc_without_cgroup_rules_nodes_give_eperm(work, host, wrapper):
    """runc's device cgroup denies 195:* unless the hook allows it: the same injection with
    the hook's cgroup step switched off (hook env NVLAUNCH_NO_CGROUPS=1) gives EPERM."""
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=0"],
                hooks={"prestart": [hook_entry(wrapper, host, extra_env=["NVLAUNCH_NO_CGROUPS=1"])]})
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0], open_result="EPERM")
    kv = parse_kv(proc.stdout)
    assert kv.get("cuInit") != "0", proc.stdout      # the fake libcuda sees EPERM


@needs_runc
def test_runc_bind_mounted_node_without_hook_gives_eperm(work, host):
    """No hook at all: a GPU node bind-mounted through config.json mounts is denied."""
    node = host.path(host.gpus[0].dev_path)
    make_bundle(work, ["/usr/bin/probe", "devices"],
                mounts=[{"destination": "/dev/nvidia1", "type": "bind", "source": node,
                         "options": ["bind"]}])
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    assert parse_devices(proc.stdout)["/dev/nvidia1"]["open"] == "EPERM", proc.stdout


@needs_runc
@pytest.mark.parametrize("env", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES="]])
def test_runc_not_a_gpu_container_gets_nothing(work, host, wrapper, env):
    make_bundle(work, ["/bin/sh", "-c", PROBE + "; exit 0"], env=env,
                hooks={"prestart": [hook_entry(wrapper, host)]})
    before = tree_snapshot(os.path.join(work, "rootfs"))
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    assert not gpu_nodes(parse_devices(proc.stdout)), proc.stdout
    assert "/dev/nvidiactl" not in parse_devices(proc.stdout)
    assert parse_kv(proc.stdout).get("dlopen") != "ok", proc.stdout
    assert tree_snapshot(os.path.join(work, "rootfs")) == before


@needs_runc
def test_container_env_cannot_steer_the_hook(work, host, wrapper):
    """Host roots, switches and loader variables in the container's env are ignored."""
    make_bundle(work, ["/bin/sh", "-c", PROBE],
                env=["NVIDIA_VISIBLE_DEVICES=0", "NVLAUNCH_DRIVER_ROOT=/nonexistent",
                     "NVLAUNCH_DEV_ROOT=/nonexistent", "NVLAUNCH_PROC_ROOT=/nonexistent",
                     "NVLAUNCH_NO_CGROUPS=1", "PYTHONPATH=/nonexistent", "PATH=/nonexistent"],
                hooks={"prestart": [hook_entry(wrapper, host)]})
    with open(os.path.join(work, "config.json")) as f:
        config = json.load(f)
    config["process"]["args"] = ["/bin/busybox", "sh", "-c",
                                 "/usr/bin/probe devices; /usr/bin/probe dlopen libcuda.so.1"]
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0])
    expect_libcuda(proc.stdout)


@needs_runc
def test_runc_user_namespace(work, host, wrapper):
    """A userns-remapped runc container (rootfs owned by the mapped root): the hook joins
    the container's user namespace as its root, so the files it creates are the container's."""
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=all"],
                hooks={"prestart": [hook_entry(wrapper, host)]}, userns=True,
                rootfs_owner=100000)
    before = tree_snapshot(os.path.join(work, "rootfs"))
    with open(os.path.join(work, "config.json")) as f:
        config = json.load(f)
    config["process"]["args"][-1] += "; ls -lnd /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/bin"
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0, 1])
    expect_libcuda(proc.stdout)
    # the links and mount points the container sees are its root's (uid 0 inside), the
    # layer's directories keep the rootfs's owner, and the rootfs itself is unchanged
    assert re.search(r"^l\S+\s+\d+\s+0\s+0\s.*libcuda.so.1 ->", proc.stdout, re.M), proc.stdout
    assert re.search(r"^d\S+\s+\d+\s+0\s+0\s.*/usr/bin$", proc.stdout, re.M), proc.stdout
    assert tree_snapshot(os.path.join(work, "rootfs")) == before


@needs_runc
@pytest.mark.parametrize("userns,way", [(False, "injected from this process"),
                                        (True, "injector child")])
def test_how_the_hook_enters(work, host, wrapper, userns, way):
    """Without a user namespace of the container's own the hook visits its mount namespace
    itself (no fork) and comes back; with one, a child joins it.  Either way the container
    gets its GPU (the failure cases below run the visiting way: their cgroup undo and
    error line happen after it came back)."""
    debug = os.path.join(work, "hook.log")
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=0"],
                hooks={"prestart": [hook_entry(wrapper, host,
                                               extra_env=[f"NVLAUNCH_DEBUG_FILE={debug}"])]},
                userns=userns, rootfs_owner=100000 if userns else None)
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0])
    with open(debug) as f:
        log = f.read()
    assert way in log and "injected;" in log, log
    other = "injector child" if way != "injector child" else "injected from this process"
    assert other not in log, log


@pytest.fixture(scope="module")
def script(moddir):
    """nvlaunch's own script as installed (tests.conftest.installed_script)."""
    return installed_script(moddir)


@needs_runc
def test_the_entry_setup_writes_when_run_as_the_script(work, host, moddir, script):
    """`nvlaunch setup runc --config` run as nvlaunch's script writes the package command
    (oci.hooks.package_command: this Python, -I -S -c, the package's directory), and
    runc's prestart hook gives the container its GPU through it."""
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=1"])
    config = os.path.join(work, "config.json")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **host.env()}
    proc = subprocess.run([script, "setup", "runc", "--config", config], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    with open(config) as f:
        doc = json.load(f)
    entry = doc["hooks"]["prestart"][0]
    assert entry["path"] == sys.executable
    assert entry["args"][:4] == [sys.executable, "-I", "-S", "-c"]
    assert repr(REPO) in entry["args"][4] and entry["args"][5:] == ["hook", "prestart"]
    assert f"NVLAUNCH_DRIVER_ROOT={host.driver_root}" in entry["env"]
    xdg = os.path.join(moddir, "xdg-setup")
    os.makedirs(xdg, mode=0o700, exist_ok=True)
    entry["env"].append(f"XDG_RUNTIME_DIR={xdg}")   # its plan cache in the test's directory
    with open(config, "w") as f:
        json.dump(doc, f)
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [1])
    expect_libcuda(proc.stdout)


@needs_runc
@pytest.mark.parametrize("kind", ["wrapper", "script"])
def test_runtime_shim_adds_the_hook_once(work, host, wrapper, script, kind):
    hook = wrapper if kind == "wrapper" else script
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=1"])
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": REPO,
           "NVLAUNCH_RUNTIME": RUNC, "NVLAUNCH_HOOK_PATH": hook, **host.env()}
    state = os.path.join(work, "state")
    # The hook entry the shim writes has an env of its own (no XDG_RUNTIME_DIR): as root its
    # plan cache would be the machine's /run/nvlaunch, so that is a private tmpfs here.
    made_mount_point = not os.path.isdir(PLAN_CACHE_DIR)       # removed again afterwards
    os.makedirs(PLAN_CACHE_DIR, mode=0o700, exist_ok=True)
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-euc",
               f'mount -t tmpfs -o mode=0700,size=4m nvlaunch-test-cache {PLAN_CACHE_DIR}; exec "$@"',
               "sh"]
    try:
        for cid in ("s1", "s2"):
            proc = subprocess.run(private + [sys.executable, "-m", "nvlaunch", "runtime", "--root",
                                             state, "run", "--bundle", work, cid], env=env,
                                  capture_output=True, text=True, timeout=60, cwd="/")
            subprocess.run([RUNC, "--root", state, "delete", "-f", cid], capture_output=True)
            assert proc.returncode == 0, proc.stderr
            expect_gpus(proc.stdout, host, [1])
            expect_libcuda(proc.stdout)
    finally:
        if made_mount_point:
            os.rmdir(PLAN_CACHE_DIR)
    with open(os.path.join(work, "config.json")) as f:
        hooks = json.load(f)["hooks"]
    assert len(hooks["prestart"]) == 1
    entry = hooks["prestart"][0]
    if kind == "wrapper":
        assert entry["path"] == wrapper and entry["args"] == ["nvlaunch", "hook", "prestart"]
    else:
        assert entry["path"] == sys.executable
        assert entry["args"] == [sys.executable, "-I", "-S", script, "hook", "prestart"]
    assert f"NVLAUNCH_DRIVER_ROOT={host.driver_root}" in entry["env"]
    assert not any(e.startswith("PYTHONPATH=") for e in entry["env"])


# ---- failures -------------------------------------------------------------------------

def _failing_run(work, host_env_entry, env, runtime=None, extra_rootfs=None, annotations=None,
                 stage="prestart"):
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=env,
                hooks={STAGE_KEYS[stage]: [host_env_entry]}, annotations=annotations)
    rootfs = os.path.join(work, "rootfs")
    if extra_rootfs:
        extra_rootfs(rootfs)
    before_tree, before_mounts = tree_snapshot(rootfs), mounts_snapshot()
    proc = run_container(work, runtime=runtime)
    assert proc.returncode != 0, proc.stdout
    assert tree_snapshot(rootfs) == before_tree
    assert mounts_snapshot() == before_mounts
    assert "probe" not in proc.stdout and "dlopen" not in proc.stdout
    return proc


def _error_lines(text: str) -> list:
    # runc quotes the hook's stderr inside its own message, with "\n" escaped
    return re.findall(r"nvlaunch: error: [^\n\\]*", text)


@needs_runc
@pytest.mark.parametrize("stage", ["prestart", "create-container"])
def test_bad_gpu_id_aborts_the_container(work, host, wrapper, stage):
    proc = _failing_run(work, hook_entry(wrapper, host, stage), ["NVIDIA_VISIBLE_DEVICES=7"],
                        stage=stage)
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "'7'" in lines[0] and "c1" in lines[0], lines


@needs_runc
@pytest.mark.parametrize("missing", ["dev/nvidiactl", "proc/driver/nvidia/version"])
def test_missing_driver_file_aborts_the_container(work, host, wrapper, moddir, missing):
    broken = build_fake_host(os.path.join(work, "broken-host"))
    os.unlink(broken.path(missing))
    proc = _failing_run(work, hook_entry(wrapper, broken), ["NVIDIA_VISIBLE_DEVICES=0"])
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and missing in lines[0], proc.stderr


@needs_runc
def test_missing_library_is_left_out(work, host, wrapper):
    """A driver library missing from the host tree is not an error: the plan leaves it out
    (libnvidia-container only warns, too); the container starts without it."""
    broken = build_fake_host(os.path.join(work, "broken-host"))
    os.unlink(os.path.join(broken.lib_dir, "libnvidia-opencl.so.580.159.04"))
    make_bundle(work, ["/bin/sh", "-c", PROBE + "; ls /usr/lib/x86_64-linux-gnu"],
                env=["NVIDIA_VISIBLE_DEVICES=0"], hooks={"prestart": [hook_entry(wrapper, broken)]})
    proc = run_container(work)
    assert proc.returncode == 0, proc.stderr
    expect_libcuda(proc.stdout)
    assert "libnvidia-opencl" not in proc.stdout


@needs_runc
def test_failure_midway_undoes_created_files(work, host, wrapper):
    """The rootfs has a directory where a driver binary's mount point must go: injection
    fails after device nodes and libraries were made; every file the hook created in the
    rootfs is removed again and no mount is left on the host."""
    def block(rootfs):
        os.makedirs(os.path.join(rootfs, "usr/bin/nvidia-smi"))
    proc = _failing_run(work, hook_entry(wrapper, host), ["NVIDIA_VISIBLE_DEVICES=0"],
                        extra_rootfs=block)
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "nvidia-smi" in lines[0], proc.stderr


# ---- crun -----------------------------------------------------------------------------

@needs_crun
@pytest.mark.parametrize("stage", ["prestart", "create-container"])
def test_crun(work, host, wrapper, stage):
    # crun makes a read-only root read-only BEFORE createContainer hooks (runc after them),
    # so a hook at that stage cannot create its mount points: root.readonly false there.
    make_bundle(work, ["/bin/sh", "-c", PROBE], env=["NVIDIA_VISIBLE_DEVICES=1"],
                hooks={STAGE_KEYS[stage]: [hook_entry(wrapper, host, stage)]},
                readonly=stage != "create-container")
    proc = run_container(work, runtime=CRUN)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [1])
    expect_libcuda(proc.stdout)


@needs_crun
def test_crun_failure(work, host, wrapper):
    """crun does not show a hook's stderr unless annotation run.oci.hooks.stderr names a file."""
    log = os.path.join(work, "hooks.stderr")
    proc = _failing_run(work, hook_entry(wrapper, host), ["NVIDIA_VISIBLE_DEVICES=7"], runtime=CRUN,
                        annotations={"run.oci.hooks.stderr": log})
    assert "hook" in proc.stderr
    with open(log) as f:
        lines = _error_lines(f.read())
    assert len(lines) == 1 and "'7'" in lines[0]


# ---- podman ---------------------------------------------------------------------------

def _setup_podman(hooks_dir: str, hook_path: str, host, nvl_python: str, pythonpath: str):
    os.makedirs(hooks_dir, exist_ok=True)
    proc = subprocess.run([nvl_python, "-m", "nvlaunch", "--driver-root", host.driver_root,
                           "--dev-root", host.dev_root, "--proc-root", host.proc_root,
                           "setup", "podman", "--config", os.path.join(hooks_dir, "nvlaunch.json"),
                           "--hook-path", hook_path],
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": pythonpath},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["chmod", "-R", "a+rX", hooks_dir], check=True)


@needs_podman
def test_podman_root(work, host, wrapper):
    hooks = os.path.join(work, "hooks")
    _setup_podman(hooks, wrapper, host, sys.executable, REPO)
    rootfs = build_rootfs(os.path.join(work, "rootfs"))
    # everything podman and runc keep in the test's directory, and no network set-up
    # (bridge, netns, ipam): nothing of this run lands in /run or /var/lib
    cmd = [PODMAN, "--root", os.path.join(work, "storage"), "--runroot", os.path.join(work, "run"),
           "--tmpdir", os.path.join(work, "tmp"), "--runtime-flag", "root=" + os.path.join(work, "runc"),
           "--runtime", RUNC, "--hooks-dir", hooks, "run", "--rm", "--net", "host", *PODMAN_ULIMITS,
           "-e", "NVIDIA_VISIBLE_DEVICES=0", "--rootfs", rootfs, "/bin/sh", "-c", PROBE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [0])
    expect_libcuda(proc.stdout)


@needs_podman
def test_podman_through_the_void_gate(work, host, moddir):
    """The hooks.d entry `setup podman` writes runs the void gate (nvlaunch/_voidgate.c):
    a container asking for a GPU gets it through the gate's exec of the Python hook; one
    asking for none starts without the hook's Python ever running (a stub in its place
    records any run)."""
    from nvlaunch.oci.hooks import VOID_GATE
    hooks = os.path.join(work, "hooks")
    os.makedirs(hooks)
    spec_path = os.path.join(hooks, "nvlaunch.json")
    proc = subprocess.run([sys.executable, "-m", "nvlaunch", "--driver-root", host.driver_root,
                           "--dev-root", host.dev_root, "--proc-root", host.proc_root,
                           "setup", "podman", "--config", spec_path],
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(spec_path) as f:
        spec = json.load(f)
    assert spec["hook"]["path"] == VOID_GATE
    xdg = os.path.join(moddir, "xdg-gate")
    os.makedirs(xdg, mode=0o700, exist_ok=True)
    spec["hook"]["env"].append(f"XDG_RUNTIME_DIR={xdg}")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    rootfs = build_rootfs(os.path.join(work, "rootfs"))

    def podman(*env, script=PROBE):
        cmd = [PODMAN, "--root", os.path.join(work, "storage"), "--runroot", os.path.join(work, "run"),
               "--tmpdir", os.path.join(work, "tmp"), "--runtime-flag", "root=" + os.path.join(work, "runc"),
               "--runtime", RUNC, "--hooks-dir", hooks, "run", "--rm", "--net", "host", *PODMAN_ULIMITS,
               *[x for e in env for x in ("-e", e)], "--rootfs", rootfs, "/bin/sh", "-c", script]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    proc = podman("NVIDIA_VISIBLE_DEVICES=1")
    assert proc.returncode == 0, proc.stderr
    expect_gpus(proc.stdout, host, [1])
    expect_libcuda(proc.stdout)
    # the hook's Python replaced by a stub that records each run
    marker = os.path.join(work, "python-ran")
    stub = os.path.join(work, "stub-python")
    with open(stub, "w") as f:
        f.write(f"#!/bin/sh\necho run >> {marker}\nexit 0\n")
    os.chmod(stub, 0o755)
    spec["hook"]["args"][1] = stub
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    for env in ((), ("NVIDIA_VISIBLE_DEVICES=void",), ("NVIDIA_VISIBLE_DEVICES=",)):
        proc = podman(*env, script="echo started; ls /dev")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("started\n") and "nvidia" not in proc.stdout, proc.stdout
    assert not os.path.exists(marker), "the gate ran Python for a container that asks for no GPU"
    proc = podman("NVIDIA_VISIBLE_DEVICES=0", script="true")
    assert proc.returncode == 0, proc.stderr
    with open(marker) as f:
        assert f.read() == "run\n"         # podman ran the gate, and the gate the stub


@pytest.fixture
def rootless_env(stage_dir):
    """Directories for podman as the test user; kills the rootless pause process after."""
    if not user_exists(TEST_USER):
        pytest.skip(f"no user {TEST_USER}")
    d = _world_dir("nvl-podman-user-")
    for sub in ("home", "xdg"):
        os.makedirs(os.path.join(d, sub), mode=0o700)
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", d], check=True)
    yield d
    pidfile = os.path.join(d, "xdg/libpod/tmp/pause.pid")
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    subprocess.run(["umount", "-R", "-l", d], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@needs_podman
def test_podman_rootless(rootless_env, stage_dir):
    d = rootless_env
    host = build_fake_host(os.path.join(d, "host"))
    subprocess.run(["chmod", "-R", "a+rX", host.root], check=True)
    hook = write_wrapper(os.path.join(d, "nvlaunch-hook"), "/usr/bin/python3", stage_dir)
    dbg = os.path.join(d, "hook.log")
    hooks = os.path.join(d, "hooks")
    _setup_podman(hooks, hook, host, sys.executable, REPO)
    # debug lines of the hook go to a file the user may write
    path = os.path.join(hooks, "nvlaunch.json")
    with open(path) as f:
        spec = json.load(f)
    spec["hook"]["env"].append(f"NVLAUNCH_DEBUG_FILE={dbg}")
    with open(path, "w") as f:
        json.dump(spec, f)
    rootfs = build_rootfs(os.path.join(d, "rootfs"))
    open(dbg, "w").close()
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", rootfs, dbg], check=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.path.join(d, "home"),
           "XDG_RUNTIME_DIR": os.path.join(d, "xdg")}
    cmd = ["setpriv", f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--init-groups",
           PODMAN, "--root", os.path.join(d, "storage"), "--runroot", os.path.join(d, "run"),
           "--runtime", RUNC, "--cgroup-manager=cgroupfs", "--hooks-dir", hooks,
           "run", "--rm", "--net", "host", *PODMAN_ULIMITS, "-e", "NVIDIA_VISIBLE_DEVICES=0",
           "--rootfs", rootfs, "/bin/sh", "-c", PROBE]
    before = _cgroup_device_lists()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=d)
    assert proc.returncode == 0, proc.stderr
    devs = expect_gpus(proc.stdout, host, [0])
    expect_libcuda(proc.stdout)
    # host root is not mapped in the rootless user namespace
    assert devs[host.gpus[0].dev_path]["uid"] == 65534
    with open(dbg) as f:
        log = f.read()
    assert "no device cgroup writes" in log, log
    assert "cgroup v" not in log, log
    assert _cgroup_device_lists() == before


def _cgroup_device_lists() -> dict:
    """devices.list of the v1 devices cgroup this test runs in (where the rootless podman
    and its container stay: a rootless user cannot make v1 cgroups) and of the root."""
    from nvlaunch.host.cgroups import parse_proc_cgroup
    out = {}
    with open("/proc/self/cgroup") as f:
        v1, _ = parse_proc_cgroup(f.read())
    for rel in {"/", v1 or "/"}:
        path = os.path.join("/sys/fs/cgroup/devices", rel.lstrip("/"), "devices.list")
        try:
            with open(path) as f:
                out[path] = f.read()
        except OSError:
            pass
    return out
