"""Many nvlaunch starts at once on ONE shared rootfs: every one must work.

- run: 50 `nvlaunch run --gpus 0 SHARED probe devices`, half as root and half as nvltest,
  each user with one plan cache directory that starts empty (so the first starts race to
  build and store the plan);
- runc + prestart hook: 50 `runc run` of 50 bundles (distinct ids) whose config.json all
  name the same rootfs (root.path absolute, readonly false), each hook injecting into it;
- the CDI hook: 50 `nvlaunch ldcache --rootfs SHARED --link ... --lib ...` with the
  arguments and env of the createContainer hook of `nvlaunch cdi generate`'s spec;
- LXC: 50 `nvlaunch lxc-hook` in private mount namespaces (unshare -m) on one rootfs,
  each followed by `probe devices` chrooted into it.

At most POOL of them run at a time (a thread pool: this machine has 2 cores).  Each start
must exit 0 with nothing on stderr and, where a container runs, see the GPU's node
allowed (ENXIO).  Afterwards: no process of the test is left, the host is unchanged where
the test could change it (test_hostile_rootfs's _diff: other test sessions run on this
machine at the same time, so only mounts at this test's paths and the host's system
directories, cgroup directories and v1 device rules, nvlaunch processes and the names in
/tmp /run /dev/shm /dev count; the host's /etc/ld.so.cache is left out, an apt run of
another session rewrites it), no temporary file (`.nvlaunch-`) is in the rootfs or a plan
cache directory, `run` left the rootfs exactly as it was (the overlay), and one more start
works.  Timeouts are hang guards only.
"""
from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO, TEST_USER, Nvlaunch, needs_root, tree_snapshot, user_exists
from tests.fakehost import build_rootfs, parse_devices
from tests.security.conftest import host_state, world_dir
from tests.security.test_hostile_rootfs import (PATH, RUNC, UNSHARE, _diff, cdi_hook,  # noqa: F401
                                                moddir, runc_spec)
from tests.security.test_kill_points import (CHROOT, HANG, _cache_litter, _cgroup_dirs, _kill_all,
                                             _temp_files, _tree_diff, _wait_gone)

pytestmark = [pytest.mark.slow, needs_root("runc, private mount namespaces, switching users")]

N = 50                 # starts per front end
POOL = 16              # at a time
_COUNTER = itertools.count()


@pytest.fixture
def shared(request):
    """A test directory with one rootfs (world-traversable) and the test's marks."""
    d = world_dir("nvl-conc-")
    rootfs = build_rootfs(os.path.join(d, "rootfs"))
    os.chmod(rootfs, 0o755)
    tag = f"nvlc-{os.getpid()}-{next(_COUNTER)}"
    yield d, rootfs, tag
    _kill_all((d, tag))
    subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)


def _xdg(d: str, user: str | None) -> str:
    path = os.path.join(d, "xdg-" + (user or "root"))
    os.mkdir(path, 0o700)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _many(fn, n: int = N) -> list:
    """fn(i) for i < n, POOL at a time; the list of what each returned that was not None
    (its failure)."""
    with ThreadPoolExecutor(POOL) as ex:
        return [r for r in ex.map(fn, range(n)) if r is not None]


def _gpu_failure(out: str, fake) -> str | None:
    devs = parse_devices(out)
    node = fake.gpus[0].dev_path
    if devs.get(node, {}).get("open") != "ENXIO" or devs.get("/dev/nvidiactl", {}).get("open") != "ENXIO":
        return f"no usable {node}: {out[-600:]}"
    return None


def _after(d: str, tag: str, before: dict, rootfs: str, xdgs=()) -> None:
    mine = (d, tag)
    left = _wait_gone(mine)
    assert not left, f"processes left: {left}"
    changed = _diff(before, host_state(), mine)
    assert not changed, "the host changed:\n" + "\n".join(changed)
    temps = _temp_files(rootfs) + [t for x in xdgs for t in _temp_files(x)]
    assert not temps, f"temporary files left: {temps}"
    litter = [n for x in xdgs for n in _cache_litter(x)]
    assert not litter, f"the cache holds more than plans and ld caches: {litter}"


def _report(failures: list) -> str:
    return f"{len(failures)} of {N} starts failed; the first ones:\n" + "\n".join(
        str(f)[:1500] for f in failures[:4])


# ---- run ----------------------------------------------------------------------------------

def test_concurrent_run(shared, fake, stage_dir):
    d, rootfs, tag = shared
    if not user_exists(TEST_USER):
        pytest.skip(f"no user {TEST_USER}; run scripts/bootstrap.sh")
    xdg_root, xdg_user = _xdg(d, None), _xdg(d, TEST_USER)
    users = [Nvlaunch(None, None, env={"XDG_RUNTIME_DIR": xdg_root}),
             Nvlaunch(TEST_USER, stage_dir, env={"XDG_RUNTIME_DIR": xdg_user})]
    tree = tree_snapshot(rootfs)
    before = host_state()

    def one(i):
        r = users[i % 2]("run", "--gpus", "0", rootfs, "/usr/bin/probe", "devices",
                         env={**fake.env(), "NVLT_CASE": d}, timeout=HANG)
        if r.returncode != 0 or r.stderr:
            return (i, users[i % 2].user or "root", r.returncode, r.stderr)
        return _gpu_failure(r.stdout, fake)
    failures = _many(one)
    assert not failures, _report(failures)
    _after(d, tag, before, rootfs, (xdg_root, xdg_user))
    after = tree_snapshot(rootfs)
    assert after == tree, "run changed the shared rootfs: " + _tree_diff(tree, after)
    for nvl in users:                                     # one more start, each user
        r = nvl("run", "--gpus", "0", rootfs, "/bin/true", env=fake.env(), timeout=HANG)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert _gpu_failure(users[1]("run", "--gpus", "0", rootfs, "/usr/bin/probe", "devices",
                                 env=fake.env(), timeout=HANG).stdout, fake) is None


# ---- runc with the prestart hook ----------------------------------------------------------------

def _bundle(d: str, spec: dict, rootfs: str, i: int, entry: dict) -> str:
    b = os.path.join(d, f"bundle-{i}")
    os.mkdir(b)
    config = json.loads(json.dumps(spec))
    config["root"] = {"path": rootfs, "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/usr/bin/probe", "devices"]
    config["process"]["env"] = config["process"].get("env", []) + [
        "NVIDIA_VISIBLE_DEVICES=0", f"NVLT_CASE={d}"]
    config["hooks"] = {"prestart": [entry]}
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return b


def test_concurrent_runc_prestart(shared, fake, request):
    if RUNC is None:
        pytest.skip("runc not installed")
    spec = request.getfixturevalue("runc_spec")
    from nvlaunch.oci.hooks import hook_entry, invocation
    d, rootfs, tag = shared
    xdg = _xdg(d, None)
    inv = invocation(gopts={"driver_root": fake.driver_root, "dev_root": fake.dev_root,
                            "proc_root": fake.proc_root}, environ={})
    entry = hook_entry(inv, "prestart")
    entry["env"] = entry["env"] + [f"XDG_RUNTIME_DIR={xdg}"]
    state = os.path.join(d, "runc-state")
    bundles = [_bundle(d, spec, rootfs, i, entry) for i in range(N + 1)]
    tree = tree_snapshot(rootfs)
    before = host_state()

    def start(i):
        cid = f"{tag}-{i}"
        try:
            r = subprocess.run([RUNC, "--root", state, "run", "--bundle", bundles[i], cid],
                               env={"PATH": PATH, "NVLT_CASE": d}, cwd=bundles[i],
                               capture_output=True, text=True, timeout=HANG)
        finally:
            subprocess.run([RUNC, "--root", state, "delete", "-f", cid], capture_output=True,
                           timeout=HANG)
        if r.returncode != 0:
            return (i, r.returncode, r.stderr)
        return _gpu_failure(r.stdout, fake)
    failures = _many(start)
    assert not failures, _report(failures)
    _after(d, tag, before, rootfs, (xdg,))
    assert not _cgroup_dirs(tag), _cgroup_dirs(tag)
    assert start(N) is None                               # one more start
    # the hook's layers went with each container: the shared rootfs is as it was
    assert tree_snapshot(rootfs) == tree, "the hooks changed the shared rootfs: " + \
        _tree_diff(tree, tree_snapshot(rootfs))


def _ld_cache_has_libcuda(rootfs: str, where: str) -> None:
    from nvlaunch.host import ldcache
    with open(os.path.join(rootfs, "etc/ld.so.cache"), "rb") as f:
        cache = {e.key: e.value for e in ldcache.parse(f.read())}
    assert cache.get("libcuda.so.1", "").startswith(where), cache.get("libcuda.so.1")


# ---- the CDI hook -------------------------------------------------------------------------------

def test_concurrent_cdi_hook(shared, request):
    hook = request.getfixturevalue("cdi_hook")
    d, rootfs, tag = shared
    env = dict(e.split("=", 1) for e in hook["env"])
    env["NVLT_CASE"] = d
    cmd = [*hook["args"], "--rootfs", rootfs]
    links = [cmd[i + 1].split("::") for i, a in enumerate(cmd) if a == "--link"]
    assert links
    before = host_state()

    def one(i):
        r = subprocess.run(cmd, executable=hook["path"], env=env, cwd="/",
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG)
        if r.returncode != 0 or r.stderr:
            return (i, r.returncode, r.stderr)
        return None
    failures = _many(one)
    assert not failures, _report(failures)
    _after(d, tag, before, rootfs)
    for target, link in links:
        assert os.readlink(rootfs + link) == target, link
    _ld_cache_has_libcuda(rootfs, "/usr/local/nvidia/lib64/")
    assert one(0) is None                                 # one more start


# ---- LXC ----------------------------------------------------------------------------------------

LXC_SCRIPT = ('r=$1; shift; if [ ! -e "$r/proc/self" ]; then mount -t proc proc "$r/proc" || exit 99; '
              f'fi; "$@" && exec {CHROOT} "$r" /usr/bin/probe devices')


def test_concurrent_lxc_hook(shared, fake):
    d, rootfs, tag = shared
    xdg = _xdg(d, None)
    before = host_state()

    def one(i):
        env = {"PATH": PATH, "PYTHONPATH": REPO, "PYTHONSAFEPATH": "1", "LANG": "C.UTF-8",
               "XDG_RUNTIME_DIR": xdg, "LXC_ROOTFS_MOUNT": rootfs, "LXC_NAME": f"{tag}-{i}",
               "LXC_HOOK_TYPE": "mount", "LXC_HOOK_SECTION": "lxc", "LXC_HOOK_VERSION": "1",
               "NVIDIA_VISIBLE_DEVICES": "0", "NVLT_CASE": d, **fake.env()}
        r = subprocess.run([UNSHARE, "-m", "--propagation", "private", "/bin/sh", "-c", LXC_SCRIPT,
                            "sh", rootfs, sys.executable, "-m", "nvlaunch", "lxc-hook"],
                           env=env, cwd="/", capture_output=True, text=True, timeout=HANG)
        if r.returncode != 0 or r.stderr:
            return (i, r.returncode, r.stderr)
        if not re.search(r"^nvlaunch: \S+: \d+ device nodes", r.stdout, re.M):
            return (i, "no summary line", r.stdout)
        return _gpu_failure(r.stdout, fake)
    failures = _many(one)
    assert not failures, _report(failures)
    _after(d, tag, before, rootfs, (xdg,))
    assert one(N) is None                                 # one more start
