"""`nvlaunch lxc-hook` under real LXC (lxc-execute, LXC 5.0) and `nvlaunch setup lxc`.

Each container is a busybox+probe rootfs (`lxc.rootfs.path = dir:...`) in a temporary
lxcpath (-P), with lxc.mount.auto = proc:mixed sys:ro, lxc.autodev = 1 and a device
policy like LXC's common.conf (deny all, allow the standard nodes), plus the block that
`nvlaunch setup lxc NAME --gpus 0 --dry-run` prints: the mount hook (a wrapper script
that runs this tree's `python -m nvlaunch "$@"`; the fake host's roots are on its
command line, as setup writes them), NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES
as lxc.environment, and the cgroup v1 + v2 device rules.  On this hybrid host LXC applies
the v1 lines and logs "Ignoring cgroup2 limits on legacy cgroup system" for the others.

The probe shows exactly GPU 0's node (/dev/nvidia<its minor>) opening with ENXIO (bound,
and allowed by the device cgroup; EPERM without setup's rules) and the driver's libcuda
loading by SONAME from the container's library directory.

The unprivileged case maps the container's ids to 100000-165535 (lxc.idmap) and runs
lxc-execute as root.  LXC writes the maps with newuidmap when it finds it on PATH, and
newuidmap checks /etc/subuid, which has no range for root here; with a PATH without
newuidmap, LXC (as root) writes /proc/PID/uid_map itself.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.kernel.conftest import world_dir

from tests.conftest import REPO, needs_root, tree_snapshot
from tests.fakehost import DEFAULT_DRIVER_VERSION, parse_devices, parse_kv

LXC_EXECUTE = shutil.which("lxc-execute") or shutil.which("lxc-execute", path="/usr/bin:/usr/sbin")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NO_NEWUIDMAP_PATH = "/usr/sbin:/sbin"      # newuidmap lives in /usr/bin
SCRIPT = "probe devices; probe dlopen libcuda.so.1"

needs_lxc = pytest.mark.skipif(not LXC_EXECUTE, reason="needs lxc (lxc-execute)")

BASE_CONFIG = """\
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.cgroup.devices.deny = a
lxc.cgroup2.devices.deny = a
"""
STD_DEVICES = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
               "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")






@pytest.fixture
def work():
    d = world_dir("nvl-lxc-")
    os.mkdir(os.path.join(d, "lxcpath"))
    # the `nvlaunch` the hook line runs: this source tree, cwd kept off sys.path
    # (its plan cache in the test's directory, not in the machine's /run/nvlaunch)
    wrapper = os.path.join(d, "nvlaunch")
    os.mkdir(os.path.join(d, "xdg"), 0o700)
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexport PYTHONPATH={REPO} PYTHONSAFEPATH=1 PYTHONDONTWRITEBYTECODE=1\n"
                f"export XDG_RUNTIME_DIR={d}/xdg\n"
                f"exec {sys.executable} -m nvlaunch \"$@\"\n")
    os.chmod(wrapper, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def nvl(fake, *args, env=None, input=None):
    e = {"PATH": PATH, "PYTHONPATH": REPO, **fake.env(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nvlaunch", *args], capture_output=True,
                          text=True, env=e, timeout=60, cwd="/", input=input)


def setup_block(fake, work, *extra) -> str:
    r = nvl(fake, "setup", "lxc", "c1", "--gpus", "0", "--hook-path",
            os.path.join(work, "nvlaunch"), "--dry-run", *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


def write_config(work, name, rootfs, block, extra="") -> str:
    text = BASE_CONFIG.format(name=name, rootfs=rootfs)
    for rule in STD_DEVICES:
        text += f"lxc.cgroup.devices.allow = {rule}\nlxc.cgroup2.devices.allow = {rule}\n"
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(text + extra + block)
    return path


LXC_RUN_DIR = "/run/lxc"        # root's LXC keeps lock files here, per lxcpath
UNSHARE = shutil.which("unshare", path=PATH) or "unshare"
MOUNT = shutil.which("mount", path=PATH) or "mount"


def lxc_execute(work, name, config, path=PATH, subids=None):
    """lxc-execute in a private mount namespace whose /run/lxc is an empty tmpfs: LXC's
    lock directories (/run/lxc/lock/<lxcpath>) are not left on the machine.  `subids`
    ("root:100000:65536"): /etc/subuid and /etc/subgid as docs/lxc.md says to set them
    up, bound over the machine's in that namespace only."""
    log = os.path.join(work, f"{name}.log")
    os.makedirs(LXC_RUN_DIR, exist_ok=True)             # a mount point (only if missing)
    # (absolute paths: `path` may leave /usr/bin out, see NO_NEWUIDMAP_PATH)
    binds = ""
    if subids:
        ids = os.path.join(work, "subids")
        with open(ids, "w") as f:
            f.write(subids + "\n")
        os.chmod(ids, 0o644)
        binds = "".join(f"{MOUNT} --bind {ids} /etc/{n}; " for n in ("subuid", "subgid"))
    private = [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-euc",
               f'{MOUNT} -t tmpfs -o mode=0755,size=1m nvlaunch-test-lxc {LXC_RUN_DIR}; {binds}'
               'exec "$@"', "sh"]
    r = subprocess.run(private + [LXC_EXECUTE, "-n", name, "-P", os.path.join(work, "lxcpath"),
                                  "-f", config, "-o", log, "-l", "DEBUG", "--", "/bin/sh", "-c", SCRIPT],
                       capture_output=True, text=True, timeout=120, cwd="/",
                       env={"PATH": path, "LANG": "C.UTF-8"})
    with open(log, errors="replace") as f:
        r.log = f.read()
    return r


def gpu_nodes(devs):
    return {p: d for p, d in devs.items() if re.fullmatch(r"/dev/nvidia[0-9]+", p)}


def _name(tag: str) -> str:
    return f"nvlt-{tag}-{os.getpid()}"


# ---------------------------------------------------------------- setup lxc (no container)


def test_setup_block_has_hook_env_and_both_rule_kinds(fake, work):
    block = setup_block(fake, work)
    lines = block.splitlines()
    assert lines[0].startswith("# >>> nvlaunch") and lines[-1] == "# <<< nvlaunch <<<"
    assert "lxc.hook.version = 1" in lines
    hook = [ln for ln in lines if ln.startswith("lxc.hook.mount = ")]
    assert hook == [f"lxc.hook.mount = {work}/nvlaunch --driver-root {fake.driver_root} "
                    f"--dev-root {fake.dev_root} --proc-root {fake.proc_root} lxc-hook"]
    assert "lxc.environment = NVIDIA_VISIBLE_DEVICES=0" in lines
    assert "lxc.environment = NVIDIA_DRIVER_CAPABILITIES=compute,utility" in lines
    gpu0 = fake.gpus[0]
    for rule in ("c 195:255 rw", f"c 195:{gpu0.minor} rw", "c 238:0 rw", "c 238:1 rw"):
        assert f"lxc.cgroup.devices.allow = {rule}" in lines
        assert f"lxc.cgroup2.devices.allow = {rule}" in lines
    other = fake.gpus[1].minor
    assert f"lxc.cgroup.devices.allow = c 195:{other} rw" not in lines


def test_setup_edits_the_config_idempotently(fake, work):
    config = os.path.join(work, "config")
    original = "# my container\nlxc.uts.name = c1\nlxc.rootfs.path = dir:/x\n"
    with open(config, "w") as f:
        f.write(original)
    os.chmod(config, 0o640)
    hook = os.path.join(work, "nvlaunch")
    for gpus in ("0", "0", "1"):
        r = nvl(fake, "setup", "lxc", "c1", "--config", config, "--gpus", gpus, "--hook-path", hook)
        assert r.returncode == 0, r.stderr
    text = open(config).read()
    assert text.startswith(original)
    assert text.count("# >>> nvlaunch") == 1 and text.count("# <<< nvlaunch <<<") == 1
    assert "NVIDIA_VISIBLE_DEVICES=1\n" in text and "NVIDIA_VISIBLE_DEVICES=0\n" not in text
    assert os.stat(config).st_mode & 0o777 == 0o640
    # lines added after the block by hand survive a rerun, in place
    with open(config, "a") as f:
        f.write("lxc.start.auto = 1\n")
    r = nvl(fake, "setup", "lxc", "c1", "--config", config, "--gpus", "all", "--hook-path", hook)
    assert r.returncode == 0, r.stderr
    text = open(config).read()
    assert text.endswith("lxc.start.auto = 1\n") and text.count("# >>> nvlaunch") == 1
    # another hook in the config: hook.version stays 0 (ours reads argv then)
    with open(config, "a") as f:
        f.write("lxc.hook.pre-start = /bin/true\n")
    r = nvl(fake, "setup", "lxc", "c1", "--config", config, "--hook-path", hook)
    assert r.returncode == 0, r.stderr
    assert "lxc.hook.version" not in open(config).read()


def test_setup_missing_config(fake, work):
    r = nvl(fake, "setup", "lxc", "nosuch", "--lxcpath", work)
    assert r.returncode == 125
    assert r.stderr.startswith("nvlaunch: error: setup lxc:") and "nosuch/config" in r.stderr


def test_hook_refuses_other_hook_types(fake, tmp_path):
    env = {"LXC_ROOTFS_MOUNT": str(tmp_path), "LXC_NAME": "c1", "NVIDIA_VISIBLE_DEVICES": "0"}
    r = nvl(fake, "lxc-hook", env={**env, "LXC_HOOK_TYPE": "start", "LXC_HOOK_SECTION": "lxc"})
    assert r.returncode == 125
    assert r.stderr.startswith("nvlaunch: error: lxc-hook: must run as lxc.hook.mount")
    r = nvl(fake, "lxc-hook", "c1", "lxc", "pre-start", env=env)          # hook version 0: argv
    assert r.returncode == 125 and "pre-start" in r.stderr
    r = nvl(fake, "lxc-hook", env=env)
    assert r.returncode == 125 and "not run by LXC" in r.stderr


def test_hook_void_does_nothing(fake, tmp_path):
    for value in (None, "", "void"):
        env = {"LXC_ROOTFS_MOUNT": str(tmp_path), "LXC_HOOK_TYPE": "mount", "LXC_HOOK_SECTION": "lxc"}
        if value is not None:
            env["NVIDIA_VISIBLE_DEVICES"] = value
        r = nvl(fake, "lxc-hook", env=env)
        assert r.returncode == 0, r.stderr
        assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- real containers


@needs_root("lxc-execute")
@needs_lxc
def test_lxc_privileged_gpu0(fake, work, make_rootfs):
    name = _name("priv")
    rootfs = make_rootfs(probe=True)
    config = write_config(work, name, rootfs, setup_block(fake, work))
    before = tree_snapshot(rootfs)
    r = lxc_execute(work, name, config)
    assert r.returncode == 0, r.stdout + r.stderr + r.log[-3000:]
    assert tree_snapshot(rootfs) == before        # no leftovers: the hook's layers are gone
    devs = parse_devices(r.stdout)
    gpu = fake.gpus[0]
    assert list(gpu_nodes(devs)) == [f"/dev/nvidia{gpu.minor}"], r.stdout
    node = devs[f"/dev/nvidia{gpu.minor}"]
    assert (node["major"], node["minor"], node["open"]) == (195, gpu.minor, "ENXIO"), r.stdout
    assert devs["/dev/nvidiactl"]["open"] == "ENXIO"
    kv = parse_kv(r.stdout)
    assert kv.get("dlopen") == "ok", r.stdout
    assert kv.get("path") == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert (kv.get("version"), kv.get("cuInit")) == (DEFAULT_DRIVER_VERSION, "0"), r.stdout
    assert "nvlaunch: " + name + ": 4 device nodes" in r.log     # the hook's stdout line
    # the hook bound everything inside the container's mount namespace: nothing on the host
    assert not os.path.exists(os.path.join(rootfs, f"dev/nvidia{gpu.minor}"))


@needs_root("lxc-execute")
@needs_lxc
def test_lxc_without_setup_rules_gets_eperm(fake, work, make_rootfs):
    """The hook writes no cgroup rules: without setup's lines the bound node is denied."""
    name = _name("norules")
    rootfs = make_rootfs(probe=True)
    block = "".join(ln + "\n" for ln in setup_block(fake, work).splitlines()
                    if ".devices.allow" not in ln)
    r = lxc_execute(work, name, write_config(work, name, rootfs, block))
    assert r.returncode == 0, r.stdout + r.stderr + r.log[-3000:]
    devs = parse_devices(r.stdout)
    assert devs[f"/dev/nvidia{fake.gpus[0].minor}"]["open"] == "EPERM", r.stdout


@needs_root("lxc-execute")
@needs_lxc
def test_lxc_void_container(fake, work, make_rootfs):
    name = _name("void")
    rootfs = make_rootfs(probe=True)
    block = setup_block(fake, work).replace("NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=void")
    r = lxc_execute(work, name, write_config(work, name, rootfs, block))
    # the container ran (sh's status is probe dlopen's, which fails: no libcuda)
    assert parse_kv(r.stdout).get("dlopen") == "fail", r.stdout + r.stderr + r.log[-2000:]
    devs = parse_devices(r.stdout)
    assert gpu_nodes(devs) == {} and "/dev/nvidiactl" not in devs, r.stdout


@needs_root("lxc-execute")
@needs_lxc
@pytest.mark.parametrize("path,subids", [(PATH, "root:100000:65536"), (NO_NEWUIDMAP_PATH, None)],
                         ids=["documented-subids", "no-newuidmap"])
def test_lxc_unprivileged_gpu0(fake, work, make_rootfs, path, subids):
    """docs/lxc.md's set-up: root has the subordinate range of lxc.idmap in /etc/subuid and
    /etc/subgid, and LXC keeps a full PATH (newuidmap writes the maps; hooks such as
    lxcfs's find readlink and the rest).  Also the old way: no newuidmap on PATH."""
    name = _name("unpriv")
    rootfs = make_rootfs(probe=True)
    subprocess.run(["chown", "-R", "100000:100000", rootfs], check=True)
    idmap = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"
    config = write_config(work, name, rootfs, setup_block(fake, work), extra=idmap)
    before = tree_snapshot(rootfs)
    r = lxc_execute(work, name, config, path=path, subids=subids)
    assert r.returncode == 0, r.stdout + r.stderr + r.log[-3000:]
    assert tree_snapshot(rootfs) == before        # no leftovers (overlay in the user namespace)
    devs = parse_devices(r.stdout)
    gpu = fake.gpus[0]
    assert list(gpu_nodes(devs)) == [f"/dev/nvidia{gpu.minor}"], r.stdout
    node = devs[f"/dev/nvidia{gpu.minor}"]
    assert node["open"] == "ENXIO", r.stdout
    assert node["uid"] == 65534          # host root seen from the user namespace: it is one
    kv = parse_kv(r.stdout)
    assert (kv.get("dlopen"), kv.get("version"), kv.get("cuInit")) == \
        ("ok", DEFAULT_DRIVER_VERSION, "0"), r.stdout
