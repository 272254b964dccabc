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
`cdi_spec_dirs` came later: it is ignored here, checked by hand), machine-wide directories.
So every podman command runs in a private mount namespace of its own (unshare --mount
--propagation private) in which each of those directories is a fresh empty tmpfs, and the
test's spec is copied into that tmpfs just before podman starts: the test neither sees the
machine's specs (another nvidia.com/gpu spec there cannot make it fail or skip) nor leaves
anything there, and parallel test processes never meet.  The only change to the host is
/var/run/cdi itself when it is missing (an empty directory, made once as a mount point).
Root podman also keeps its storage, run and tmp directories (--root, --runroot, --tmpdir)
and runc's state (--runtime-flag root=) in the test's own directory, and every podman reads
hooks from an empty --hooks-dir, not from the machine's hooks.d directories.

Rootless podman (user nvltest) runs too, with one change to the spec: rootless runc
bind-mounts each device node from the host path named by the *container* path
(/dev/nvidia0 on this machine, which has no NVIDIA driver), not from hostPath, so the
fake host's nodes are given as bind mounts instead.  On a real GPU host (dev root "/")
the spec works rootless unchanged.  The hook and its ld cache work are the same.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.kernel.conftest import world_dir

from tests.conftest import REPO, TEST_USER, needs_root, user_exists
from tests.fakehost import DEFAULT_DRIVER_VERSION, parse_devices, parse_kv

PODMAN = shutil.which("podman")
RUNC = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")     # what podman 4.3 reads; the second wins
SPEC_DIR = "/var/run/cdi"
SPEC_NAME = "nvlaunch-test.json"
PODMAN_RUN = ["--runtime", "runc", "run", "--rm", "--net", "host",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SCRIPT = "probe devices; probe dlopen libcuda.so.1; env"

pytestmark = [
    needs_root("podman, a private mount namespace, mknod"),
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


@pytest.fixture
def work():
    """The test's own directory: the spec, an empty hooks dir, root podman's storage."""
    d = world_dir("nvl-cdi-")
    os.mkdir(os.path.join(d, "hooks"), 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def private_spec_dirs(cmd: list, spec_file: str) -> list:
    """`cmd` in a private mount namespace in which every CDI spec directory podman reads is
    an empty tmpfs, but for `spec_file`, copied into SPEC_DIR as SPEC_NAME.  The namespace
    and its tmpfs go away with the last process in it (podman, conmon and the container
    are all its children)."""
    os.makedirs(SPEC_DIR, exist_ok=True)          # a mount point (only if missing)
    hide = sorted({os.path.realpath(d) for d in CDI_DIRS if os.path.isdir(d)})
    script = ('spec=$1; shift; for d in ' + " ".join(hide) + '; do '
              'mount -t tmpfs -o mode=0755,size=1m nvlaunch-test-cdi "$d"; done; '
              f'cp "$spec" {SPEC_DIR}/{SPEC_NAME}; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script, "sh",
            spec_file, *cmd]


def podman(args, work, spec: dict, user=None, env=None, timeout=180):
    """podman ARGS (global options first) with `spec` as the only CDI spec it can see."""
    spec_file = os.path.join(work, "spec.json")
    with open(spec_file, "w") as f:
        json.dump(spec, f, indent=1)
    os.chmod(spec_file, 0o644)
    cmd = [PODMAN, "--hooks-dir", os.path.join(work, "hooks")]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] + cmd
    else:
        cmd += ["--root", os.path.join(work, "storage"), "--runroot", os.path.join(work, "run"),
                "--tmpdir", os.path.join(work, "tmp"),
                "--runtime-flag", "root=" + os.path.join(work, "runc")]   # not /run/runc
    return subprocess.run(private_spec_dirs(cmd + list(args), spec_file), capture_output=True,
                          text=True, timeout=timeout, cwd="/",
                          env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_spec_dirs_are_private(work):
    """Inside: each spec directory a tmpfs, holding only the test's spec; outside: nothing
    of it, before or after."""
    def listing():
        return {d: sorted(os.listdir(d)) for d in CDI_DIRS if os.path.isdir(d)}
    os.makedirs(SPEC_DIR, exist_ok=True)
    before = listing()
    spec_file = os.path.join(work, "spec.json")
    with open(spec_file, "w") as f:
        f.write('{"cdiVersion": "0.5.0"}\n')
    show = 'for d in "$@"; do [ ! -d "$d" ] || echo "$d $(stat -f -c %T "$d")" $(ls -A "$d"); done'
    r = subprocess.run(private_spec_dirs(["sh", "-c", show, "sh", *before], spec_file),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    seen = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert seen == {d: ["tmpfs"] + ([SPEC_NAME] if d == SPEC_DIR else []) for d in before}
    assert listing() == before


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


def test_podman_root_gpu_by_index(fake, make_rootfs, work, ldcache_command_wired):
    rootfs = make_rootfs(probe=True)
    r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=1", "--rootfs", rootfs,
                             "/bin/sh", "-c", SCRIPT], work, generate(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_container(r.stdout, fake.gpus[1])
    # the hook's work is in the rootfs (podman --rootfs uses the directory itself)
    assert os.readlink(os.path.join(rootfs, "usr/local/nvidia/lib64/libcuda.so.1")) == \
        f"libcuda.so.{DEFAULT_DRIVER_VERSION}"


def test_podman_root_read_only_rootfs(fake, make_rootfs, work, ldcache_command_wired):
    """`podman run --read-only`: runc makes the root read-only only after the
    createContainer hooks ran, so the spec's hook still makes its links and cache."""
    rootfs = make_rootfs(probe=True)
    r = podman(PODMAN_RUN + ["--read-only", "--device", "nvidia.com/gpu=1", "--rootfs", rootfs,
                             "/bin/sh", "-c", SCRIPT + "; touch /x 2>&1; true"], work, generate(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_container(r.stdout, fake.gpus[1])
    assert "Read-only file system" in r.stdout, r.stdout      # the root was read-only


def test_podman_root_gpu_by_uuid_and_yaml(fake, make_rootfs, work, ldcache_command_wired):
    """The same through the UUID name, with the spec as YAML."""
    import yaml
    rootfs = make_rootfs(probe=True)
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "cdi", "generate", "--format", "yaml"],
                       capture_output=True, text=True, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **fake.env()})
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    gpu = fake.gpus[0]
    r = podman(PODMAN_RUN + ["--device", f"nvidia.com/gpu={gpu.uuid}", "--rootfs", rootfs,
                             "/bin/sh", "-c", SCRIPT], work, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_container(r.stdout, gpu)


def test_podman_root_unknown_device_is_refused(fake, make_rootfs, work):
    rootfs = make_rootfs(probe=False)
    r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=7", "--rootfs", rootfs, "/bin/true"],
               work, generate(fake))
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


def test_podman_rootless(fake, make_rootfs, work, rootless_home, ldcache_command_wired):
    env, pw = rootless_home
    rootfs = make_rootfs(probe=True)
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", rootfs], check=True)
    r = podman(PODMAN_RUN + ["--device", "nvidia.com/gpu=1", "--rootfs", rootfs,
                             "/bin/sh", "-c", SCRIPT], work, _as_mounts(generate(fake)),
               user=TEST_USER, env=env)
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
