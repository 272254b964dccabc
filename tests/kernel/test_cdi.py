"""The CDI spec in a real runtime: podman 4.3 (Debian 12) with runc, `--device
nvidia.com/gpu=...`, a busybox+probe rootfs (`--rootfs`) and the fake H200 host.

What each run shows:
- probe devices: exactly the requested GPU's /dev/nvidiaN (its minor, not its index) and
  the control nodes, each opening with ENXIO: the node is there and the device cgroup
  lets it through (runc made the rule from the spec's deviceNodes; a denied node gives
  EPERM);
- probe dlopen libcuda.so.1: the driver's libcuda (580.159.04, cuInit 0) loads by SONAME,
  i.e. the spec's createContainer hook (`nvlaunch ldcache`) made the .so.1 link and put
  it in the container's ld.so.cache;
- NVIDIA_VISIBLE_DEVICES=void in the container (no second injection by a runtime hook).

Podman 4.3 reads specs only from /etc/cdi and /var/run/cdi (containers.conf
`cdi_spec_dirs` came later: it is ignored here, checked by hand), so each test writes a
uniquely named file into /var/run/cdi (the directory that wins over /etc/cdi) and removes
it in a finally; a lock file keeps two test processes from offering the same device names
at once.

Rootless podman (user nvltest) runs too, with one change to the spec: rootless runc
bind-mounts each device node from the host path named by the *container* path
(/dev/nvidia0 on this machine, which has no NVIDIA driver), not from hostPath, so the
fake host's nodes are given as bind mounts instead.  On a real GPU host (dev root "/")
the spec works rootless unchanged.  The hook and its ld cache work are the same.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from tests.kernel.conftest import world_dir

from tests.conftest import REPO, TEST_USER, is_root, user_exists
from tests.fakehost import DEFAULT_DRIVER_VERSION, parse_devices, parse_kv

PODMAN = shutil.which("podman")
RUNC = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")
SPEC_DIR = "/var/run/cdi"
OTHER_SPEC_DIRS = ("/var/run/cdi",)      # same priority as ours: a conflict there is fatal
LOCK = os.path.join(SPEC_DIR, ".nvlaunch-tests.lock")
PODMAN_RUN = ["--runtime", "runc", "run", "--rm", "--net", "host",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SCRIPT = "probe devices; probe dlopen libcuda.so.1; env"

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root (podman, /var/run/cdi, mknod)"),
    pytest.mark.skipif(not PODMAN or not RUNC, reason="needs podman and runc"),
]






@pytest.fixture(scope="module")
def ldcache_command_wired():
    """The spec's hook runs `nvlaunch ldcache`; fail clearly if the CLI does not reach it."""
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "ldcache", "--help"],
                       capture_output=True, text=True, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    if "usage: nvlaunch ldcache" not in r.stdout:
        pytest.fail("`nvlaunch ldcache` does not reach nvlaunch.frontends.ldcache_hook.cmd_ldcache "
                    "(cli.COMMANDS['ldcache']): " + r.stderr.strip())


def generate(fake, *extra) -> dict:
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "cdi", "generate", *extra],
                       capture_output=True, text=True, timeout=60, cwd="/",
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO, **fake.env()})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class SpecFile:
    """A spec installed in /var/run/cdi under a unique name while the lock is held."""

    def __init__(self, spec: dict):
        self.spec = spec

    def __enter__(self):
        os.makedirs(SPEC_DIR, exist_ok=True)
        self.lock = open(LOCK, "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        for d in OTHER_SPEC_DIRS:
            for name in os.listdir(d):
                p = os.path.join(d, name)
                if name.endswith((".json", ".yaml", ".yml")) and os.path.isfile(p):
                    with open(p, errors="replace") as f:
                        if self.spec["kind"] in f.read():
                            self.__exit__()
                            pytest.skip(f"{p} already declares {self.spec['kind']}: "
                                        "podman would refuse the duplicated devices")
        self.path = os.path.join(SPEC_DIR, f"nvlaunch-test-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        from nvlaunch.frontends.cdi import write_atomic
        write_atomic(self.path, json.dumps(self.spec, indent=1))
        return self

    def __exit__(self, *exc):
        try:
            if getattr(self, "path", None):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def podman(args, user=None, env=None, timeout=180):
    cmd = [PODMAN] + list(args)
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/",
                          env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def gpu_nodes(devs: dict) -> dict:
    return {p: d for p, d in devs.items() if re.fullmatch(r"/dev/nvidia[0-9]+", p)}


def check_gpu_container(out: str, gpu, cgroup_checked: bool = True):
    devs = parse_devices(out)
    nodes = gpu_nodes(devs)
    assert list(nodes) == [f"/dev/nvidia{gpu.minor}"], out
    node = nodes[f"/dev/nvidia{gpu.minor}"]
    assert (node["type"], node["major"], node["minor"]) == ("c", 195, gpu.minor)
    assert node["open"] == "ENXIO", out          # EPERM would be the device cgroup
    for ctl in ("/dev/nvidiactl", "/dev/nvidia-uvm"):
        assert devs[ctl]["open"] == "ENXIO", out
    kv = parse_kv(out)
    assert kv.get("dlopen") == "ok", out
    assert kv.get("version") == DEFAULT_DRIVER_VERSION, out
    assert kv.get("cuInit") == "0", out
    assert re.search(r"^NVIDIA_VISIBLE_DEVICES=void$", out, re.M), out


def test_podman_root_gpu_by_index(fake, make_rootfs, ldcache_command_wired):
    rootfs = make_rootfs(probe=True)
    spec = generate(fake)
    with SpecFile(spec):
        r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=1", "--rootfs", rootfs,
                                 "/bin/sh", "-c", SCRIPT])
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_container(r.stdout, fake.gpus[1])
    # the hook's work is in the rootfs (podman --rootfs uses the directory itself)
    assert os.readlink(os.path.join(rootfs, "usr/local/nvidia/lib64/libcuda.so.1")) == \
        f"libcuda.so.{DEFAULT_DRIVER_VERSION}"


def test_podman_root_gpu_by_uuid_and_yaml(fake, make_rootfs, ldcache_command_wired):
    """The same through the UUID name, with the spec as YAML."""
    import yaml
    rootfs = make_rootfs(probe=True)
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "cdi", "generate", "--format", "yaml"],
                       capture_output=True, text=True, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **fake.env()})
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    gpu = fake.gpus[0]
    with SpecFile(spec):
        r = podman(PODMAN_RUN + ["--device", f"nvidia.com/gpu={gpu.uuid}", "--rootfs", rootfs,
                                 "/bin/sh", "-c", SCRIPT])
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_container(r.stdout, gpu)


def test_podman_root_unknown_device_is_refused(fake, make_rootfs):
    rootfs = make_rootfs(probe=False)
    with SpecFile(generate(fake)):
        r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=7", "--rootfs", rootfs, "/bin/true"])
    assert r.returncode != 0
    assert "nvidia.com/gpu=7" in r.stderr


def _as_mounts(spec: dict) -> dict:
    """deviceNodes -> bind mounts of hostPath (see the module docstring: rootless runc
    binds the container path from the host)."""
    spec = json.loads(json.dumps(spec))
    for edits in [spec["containerEdits"]] + [d["containerEdits"] for d in spec["devices"]]:
        nodes = edits.pop("deviceNodes", [])
        edits.setdefault("mounts", []).extend(
            {"hostPath": n.get("hostPath", n["path"]), "containerPath": n["path"],
             "options": ["bind", "nosuid", "noexec"]} for n in nodes)
    return spec


@pytest.fixture
def rootless_home():
    if not user_exists(TEST_USER):
        pytest.skip(f"no user {TEST_USER}")
    import pwd
    pw = pwd.getpwnam(TEST_USER)
    d = world_dir("nvl-cdi-rootless-")
    home, xdg = os.path.join(d, "home"), os.path.join(d, "xdg")
    for p in (home, xdg):
        os.mkdir(p, 0o700)
        os.chown(p, pw.pw_uid, pw.pw_gid)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "XDG_RUNTIME_DIR": xdg,
           "LANG": "C.UTF-8"}
    yield env, pw
    # rootless podman leaves its pause process (holder of the user namespace) running
    pidfile = os.path.join(xdg, "libpod", "tmp", "pause.pid")
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    shutil.rmtree(d, ignore_errors=True)


def test_podman_rootless(fake, make_rootfs, rootless_home, ldcache_command_wired):
    env, pw = rootless_home
    rootfs = make_rootfs(probe=True)
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", rootfs], check=True)
    spec = _as_mounts(generate(fake))
    with SpecFile(spec):
        r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=1", "--rootfs", rootfs,
                                 "/bin/sh", "-c", SCRIPT], user=TEST_USER, env=env)
    if r.returncode != 0 and ("newuidmap" in r.stderr or "cannot set up namespace" in r.stderr
                              or "user namespace" in r.stderr):
        pytest.skip("rootless podman cannot start here: " + r.stderr.strip()[-300:])
    assert r.returncode == 0, r.stdout + r.stderr
    devs = parse_devices(r.stdout)
    assert list(gpu_nodes(devs)) == [f"/dev/nvidia{fake.gpus[1].minor}"], r.stdout
    assert devs[f"/dev/nvidia{fake.gpus[1].minor}"]["open"] == "ENXIO"
    kv = parse_kv(r.stdout)
    assert (kv.get("dlopen"), kv.get("version"), kv.get("cuInit")) == \
        ("ok", DEFAULT_DRIVER_VERSION, "0"), r.stdout
    # the hook ran as root of the user namespace: its links belong to the user on the host
    link = os.path.join(rootfs, "usr/local/nvidia/lib64/libcuda.so.1")
    assert os.lstat(link).st_uid == pw.pw_uid
