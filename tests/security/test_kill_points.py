"""nvlaunch killed at every phase of its work: nothing may be left behind, and the next
start on the same rootfs must work.

NVLAUNCH_STOP_AT=PHASE (nvlaunch.core.log.checkpoint) makes nvlaunch say
`nvlaunch: stopped at PHASE` on its stderr and wait there; the test waits for that line
and kills it.  Phases and front ends:

  run-root, run-user   `nvlaunch run --gpus 0` as root and as nvltest: run-clone,
                       run-mapped (P), run-staging ... run-pivot, run-init (PID 1); the
                       process the test started (P) gets SIGKILL
  prestart, create-runtime
                       `nvlaunch hook STAGE` under real runc: hook-plan, hook-cgroup,
                       hook-inject (the injector child), inject-ldcache (the child too)
  create-container     the same but hook-inject (it injects in-process)
  lxc                  `nvlaunch lxc-hook` under `unshare -m`: inject-ldcache
  cdi                  `nvlaunch ldcache` as a createContainer hook (the state JSON on
                       stdin, the entry of `nvlaunch cdi generate`'s spec): ldcache-links

Every hook case runs twice: killed with SIGKILL, and ended with SIGTERM, which a hook
(the LXC and CDI hooks as much as the OCI one: each may leave files in a rootfs that
outlives it) turns into its error path (nvlaunch.core.interrupt): it must exit non-zero with exactly
one `nvlaunch: error:` line and leave the rootfs as it found it (a fresh rootfs here, so
"as before the start" is the whole tree); a runc hook stopped after its cgroup step must
also log (NVLAUNCH_DEBUG_FILE) that it removed its rules again, since runc deletes the
container's cgroup right after.  The signal goes to the hook process (for
prestart/create-runtime the parent of the stopped injector child), found by its
environment: a createContainer hook runs in the container's pid namespace, where its own
pid names another process.  runc does not show a hook's stderr while the hook runs, so
each hook entry runs nvlaunch through `sh -c 'exec "$@" 2>>ERRFILE'` and the test polls
ERRFILE for the line.

After each kill:
- no process of the case is left (none whose command line, environment or cgroup names
  the case's directory or container id), polled for under HANG seconds (a hang guard);
- the host is unchanged where the case could change it (test_hostile_rootfs's _diff:
  mounts at the case's paths and the host's system directories, cgroup directories and
  v1 device rules, nvlaunch processes, names in /tmp /run /dev/shm /dev), and no cgroup
  directory of the container is left once runc has deleted it;
- no temporary file (a name with `.nvlaunch-`) is in the rootfs, and the case's plan
  cache directory holds only plan files;
- the next start on the same rootfs works and gives the GPU: `run ... /bin/true` exits 0
  and `probe devices` in it shows the GPU's node allowed (ENXIO); a fresh `runc run` of
  the same bundle (its hook entry without NVLAUNCH_STOP_AT) exits 0 with the node; the
  LXC hook again, then the node seen through chroot; the CDI hook again, with its links
  and ld.so.cache entry in place.

Other test sessions run on this machine at the same time; _diff only counts what this
case could have touched (see test_hostile_rootfs), and the host's /etc/ld.so.cache is
left out (another session's apt run rewrites it; these rootfs plant no attack on it).
"""
from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TEST_USER, Nvlaunch, needs_root, tree_snapshot, user_exists
from tests.fakehost import build_rootfs, parse_devices
from tests.security.conftest import host_state, world_dir
from tests.security.test_hostile_rootfs import (PATH, RUNC, UNSHARE, _diff, cdi_hook,  # noqa: F401
                                                moddir, runc_spec)

pytestmark = [pytest.mark.slow, needs_root("runc, cgroups, private mount namespaces, switching users")]

HANG = 30                        # seconds: a hang guard, never a timed assertion
CHROOT = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "chroot"
RUN_PHASES = ("run-clone", "run-mapped", "run-staging", "run-layer", "run-ldcache", "run-overlay",
              "run-base-mounts", "run-binds", "run-pivot", "run-init")
HOOK_PHASES = ("hook-plan", "hook-cgroup", "hook-inject", "inject-ldcache")
PHASES = {"run-root": RUN_PHASES, "run-user": RUN_PHASES,
          "prestart": HOOK_PHASES, "create-runtime": HOOK_PHASES,
          "create-container": tuple(p for p in HOOK_PHASES if p != "hook-inject"),
          "lxc": ("inject-ldcache",), "cdi": ("ldcache-links",)}
STAGE_KEYS = {"prestart": "prestart", "create-runtime": "createRuntime",
              "create-container": "createContainer"}
CASES = ([(front, phase, "KILL") for front in ("run-root", "run-user") for phase in RUN_PHASES]
         + [(front, phase, sig) for front in ("prestart", "create-runtime", "create-container",
                                              "lxc", "cdi")
            for phase in PHASES[front] for sig in ("KILL", "TERM")])
TEMP_MARK = ".nvlaunch-"
WRAP = 'exec "$@" 2>>"$NVLT_ERR"'
LXC_SCRIPT = ('r=$1; shift; if [ ! -e "$r/proc/self" ]; then mount -t proc proc "$r/proc" || exit 99; fi; '
              f'if [ -n "$NVLT_PROBE" ]; then "$@" && exec {CHROOT} "$r" /usr/bin/probe devices; '
              'exit $?; fi; exec "$@"')
STOPPED = "nvlaunch: stopped at {}\n"
_COUNTER = itertools.count()


# ---- what a case left --------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError:
        return ""


def _ours(pid: str, mine: tuple) -> bool:
    text = "".join(_read(f"/proc/{pid}/{what}") for what in ("cmdline", "environ", "cgroup"))
    return any(m in text for m in mine)


def _leftovers(mine: tuple) -> list:
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != me and _ours(pid, mine):
            cmd = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
            if cmd:                                  # (a zombie has none: not running)
                out.append((pid, cmd[:200]))
    return out


def _wait_gone(mine: tuple) -> list:
    """The case's processes still there after HANG seconds of waiting for them to go
    (a killed process's children die asynchronously: parent-death signals, pid namespaces)."""
    end = time.monotonic() + HANG
    left = _leftovers(mine)
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = _leftovers(mine)
    return left


def _kill_all(mine: tuple) -> None:
    for pid, _ in _leftovers(mine):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _temp_files(root: str) -> list:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames if TEMP_MARK in n]
    return out


def _cache_litter(xdg: str) -> list:
    """What the cache directory holds besides plan files and merged ld caches (plan.ldmemo)."""
    d = os.path.join(xdg, "nvlaunch")
    if not os.path.isdir(d):
        return []
    return [n for n in os.listdir(d) if not re.fullmatch(r"(plan|ldcache)-[0-9a-f]{8}", n)]


def _cgroup_dirs(cid: str) -> list:
    out = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        out += [os.path.join(dirpath, n) for n in dirnames if cid in n]
    return out


def _tree_diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added={added[:20]} removed={removed[:20]} changed={changed[:20]}"


# ---- starting and stopping -----------------------------------------------------------------------

def _wait_stopped_pipe(proc: subprocess.Popen, phase: str) -> str:
    """Read proc's stderr until the `stopped at PHASE` line; fails if it ends first."""
    want = STOPPED.format(phase)
    buf = b""
    end = time.monotonic() + HANG
    fd = proc.stderr.fileno()
    while want.encode() not in buf:
        left = end - time.monotonic()
        assert left > 0, f"no {want!r} after {HANG} s (a hang); stderr: {buf.decode()[-2000:]}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"nvlaunch ended before {phase}: rc={proc.wait()} stderr: {buf.decode()}"
            buf += chunk
    return buf.decode(errors="replace")


def _wait_stopped_file(path: str, phase: str, proc: subprocess.Popen) -> str:
    want = STOPPED.format(phase)
    end = time.monotonic() + HANG
    while want not in _read(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the runtime ended (rc {proc.returncode}) before {phase}:\n"
                                 f"{err[-3000:]}\nhook stderr: {_read(path)}")
        assert time.monotonic() < end, f"no {want!r} after {HANG} s (a hang): {_read(path)}"
        time.sleep(0.02)
    return _read(path)


def _popen(cmd: list, env: dict, cwd: str = "/", stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple:
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running {HANG} s after the signal (a hang): "
                             f"{err.decode(errors='replace')[-2000:]}") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _error_lines(text: str) -> list:
    return [ln for ln in text.splitlines() if ln.startswith("nvlaunch: error: ")]


def _assert_gpu(out: str, fake, what: str) -> None:
    devs = parse_devices(out)
    node = fake.gpus[0].dev_path
    assert node in devs, f"{what}: no {node} in the next start:\n{out}"
    assert devs[node]["open"] == "ENXIO", f"{what}: {node} not usable: {devs[node]}"
    assert devs["/dev/nvidiactl"]["open"] == "ENXIO", f"{what}: {devs['/dev/nvidiactl']}"


# ---- the case -----------------------------------------------------------------------------------------

class Case:
    def __init__(self, fake, front: str, phase: str, sig: str):
        self.fake, self.front, self.phase = fake, front, phase
        self.sig = signal.SIGKILL if sig == "KILL" else signal.SIGTERM
        self.dir = world_dir("nvl-kill-")
        self.cid = f"nvlk-{os.getpid()}-{next(_COUNTER)}"
        self.mine = (self.dir, self.cid)
        self.bundle = os.path.join(self.dir, "bundle")
        os.mkdir(self.bundle)
        self.rootfs = build_rootfs(os.path.join(self.dir, "rootfs"))
        os.chmod(self.rootfs, 0o755)
        self.xdg = os.path.join(self.dir, "xdg")
        os.mkdir(self.xdg, 0o700)
        self.err = os.path.join(self.dir, "hook.err")
        self.debug = os.path.join(self.dir, "hook.debug")

    def cleanup(self) -> None:
        _kill_all(self.mine)
        if RUNC:
            subprocess.run([RUNC, "--root", self._state_dir, "delete", "-f", self.cid],
                           capture_output=True, timeout=HANG)
        subprocess.run(["rm", "-rf", "--one-file-system", self.dir], check=False)

    @property
    def _state_dir(self) -> str:
        return os.path.join(self.bundle, "state")


def _check_leftovers(case: Case, before: dict) -> None:
    left = _wait_gone(case.mine)
    assert not left, f"{case.front} killed at {case.phase}: processes left: {left}"
    after = host_state()
    changed = _diff(before, after, case.mine)
    assert not changed, f"{case.front} at {case.phase} changed the host:\n" + "\n".join(changed)
    temps = _temp_files(case.rootfs)
    assert not temps, f"temporary files left in the rootfs: {temps}"
    litter = _cache_litter(case.xdg)
    assert not litter, f"the plan cache directory holds more than plans: {litter}"


# ---- run --------------------------------------------------------------------------------------------

def _run_front(case: Case, stage_dir: str) -> None:
    fake = case.fake
    if case.front == "run-root":
        nvl = Nvlaunch(None, None, env={"XDG_RUNTIME_DIR": case.xdg})
    else:
        if not user_exists(TEST_USER):
            pytest.skip(f"no user {TEST_USER}; run scripts/bootstrap.sh")
        pw = pwd.getpwnam(TEST_USER)
        os.chown(case.xdg, pw.pw_uid, pw.pw_gid)
        nvl = Nvlaunch(TEST_USER, stage_dir, env={"XDG_RUNTIME_DIR": case.xdg})
    before = host_state()
    proc = nvl.popen("run", "--gpus", "0", case.rootfs, "/bin/true", stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                     env={**fake.env(), "NVLAUNCH_STOP_AT": case.phase})
    try:
        _wait_stopped_pipe(proc, case.phase)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=HANG) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    _check_leftovers(case, before)
    r = nvl("run", "--gpus", "0", case.rootfs, "/bin/true", env=fake.env(), timeout=HANG)
    assert (r.returncode, r.stderr) == (0, ""), f"the next start failed: {r.returncode} {r.stderr}"
    r = nvl("run", "--gpus", "0", case.rootfs, "/usr/bin/probe", "devices", env=fake.env(),
            timeout=HANG)
    assert r.returncode == 0, r.stderr
    _assert_gpu(r.stdout, fake, case.front)
    assert not _temp_files(case.rootfs) and not _cache_litter(case.xdg)


# ---- runc hooks -------------------------------------------------------------------------------------

def _stage_entry(case: Case, stage: str, stop: str | None) -> dict:
    """The entry nvlaunch writes for the hook (oci.hooks.invocation), run through WRAP,
    with the case's plan cache, debug file and (for the killed start) NVLAUNCH_STOP_AT."""
    from nvlaunch.oci.hooks import hook_entry, invocation
    fake = case.fake
    inv = invocation(gopts={"driver_root": fake.driver_root, "dev_root": fake.dev_root,
                            "proc_root": fake.proc_root}, environ={})
    base = hook_entry(inv, stage)
    env = base["env"] + [f"XDG_RUNTIME_DIR={case.xdg}", f"NVLAUNCH_DEBUG_FILE={case.debug}",
                         f"NVLT_ERR={case.err}"]
    if stop:
        env.append(f"NVLAUNCH_STOP_AT={stop}")
    return {"path": "/bin/sh", "args": ["sh", "-c", WRAP, "sh", base["path"], *base["args"][1:]],
            "env": env}


def _write_bundle(case: Case, spec: dict, args: list, stop: str | None) -> None:
    config = json.loads(json.dumps(spec))
    config["root"] = {"path": case.rootfs, "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["process"]["env"] = config["process"].get("env", []) + [
        "NVIDIA_VISIBLE_DEVICES=0", f"NVLT_CASE={case.dir}"]
    config["hooks"] = {STAGE_KEYS[case.front]: [_stage_entry(case, case.front, stop)]}
    with open(os.path.join(case.bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def _runc(case: Case, *args: str) -> list:
    return [RUNC, "--root", case._state_dir, *args]


def _hook_pid(case: Case) -> int:
    """The hook's pid in this pid namespace (a createContainer hook runs in the
    container's, where its own $$ means another process here): the process whose
    environment is the case's hook entry's and whose parent's is not (prestart's
    injector child has it too)."""
    mark = f"NVLT_ERR={case.err}\0"
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and mark in _read(f"/proc/{pid}/environ"):
            stat = _read(f"/proc/{pid}/stat")
            found[pid] = stat.rpartition(")")[2].split()[1] if stat else ""
    top = [int(p) for p, ppid in found.items() if ppid not in found]
    assert len(top) == 1, f"cannot tell the hook's process: {found}"
    return top[0]


def _container_devices_list(case: Case, hook_pid: int) -> str:
    """The v1 device rules of the container's cgroup: the one of the init pid the hook
    logged ("pid N"), for createContainer (which runs in that cgroup and gets the pid
    in the container's pid namespace) the hook's own."""
    m = re.search(r"container \S+, pid (\d+)", _read(case.debug))
    assert m, f"no pid in the hook's debug file:\n{_read(case.debug)}"
    pid = hook_pid if case.front == "create-container" else m.group(1)
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _, ctrl, path = line.split(":", 2)
        if "devices" in ctrl.split(","):
            return _read(f"/sys/fs/cgroup/devices{path}/devices.list")
    return ""


def _runc_front(case: Case, spec: dict) -> None:
    if RUNC is None:
        pytest.skip("runc not installed")
    _write_bundle(case, spec, ["/bin/true"], case.phase)
    tree = tree_snapshot(case.rootfs)
    before = host_state()
    runc_env = {"PATH": PATH, "NVLT_CASE": case.dir}
    proc = _popen(_runc(case, "run", "--bundle", case.bundle, case.cid), runc_env, cwd=case.bundle)
    try:
        _wait_stopped_file(case.err, case.phase, proc)
        pid = _hook_pid(case)
        if case.phase == "hook-cgroup":
            # the kill point means something: the rules are in the container's cgroup now
            major = os.major(os.stat(case.fake.path(case.fake.gpus[0].dev_path)).st_rdev)
            rules = _container_devices_list(case, pid)
            assert f"c {major}:" in rules, f"no device rule at hook-cgroup: {rules}"
        os.kill(pid, case.sig)
        rc, _, runc_err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    delete = subprocess.run(_runc(case, "delete", "-f", case.cid), capture_output=True, text=True,
                            timeout=HANG)
    assert rc != 0, f"runc run succeeded although its hook was killed at {case.phase}"
    hook_err = _read(case.err)
    if case.sig == signal.SIGTERM:
        # the hook's own error path: one error line, a non-zero exit, not death by the signal
        assert "Traceback" not in hook_err, hook_err
        lines = [ln for ln in hook_err.splitlines() if ln != STOPPED.format(case.phase).strip()]
        assert len(lines) == 1 and lines[0].startswith("nvlaunch: error: "), (
            f"expected one error line from the hook, got:\n{hook_err}")
        assert "SIGTERM" in lines[0], lines[0]
        assert re.search(r"exit status [1-9]", runc_err), f"the hook did not exit: {runc_err}"
        if case.phase != "hook-plan":
            assert "cgroup rules removed again" in _read(case.debug), _read(case.debug)
        after = tree_snapshot(case.rootfs)
        assert after == tree, "the rootfs changed: " + _tree_diff(tree, after)
    _check_leftovers(case, before)
    cgroups = _cgroup_dirs(case.cid)
    assert not cgroups, f"cgroup directories left after runc delete ({delete.stderr}): {cgroups}"
    # the next start: the same bundle, its hook without the stop
    _write_bundle(case, spec, ["/usr/bin/probe", "devices"], None)
    r = subprocess.run(_runc(case, "run", "--bundle", case.bundle, case.cid), env=runc_env,
                       cwd=case.bundle, capture_output=True, text=True, timeout=HANG)
    subprocess.run(_runc(case, "delete", "-f", case.cid), capture_output=True, timeout=HANG)
    assert r.returncode == 0, f"the next runc run failed: {r.stderr}\nhook: {_read(case.err)}"
    _assert_gpu(r.stdout, case.fake, case.front)
    assert not _temp_files(case.rootfs) and not _cache_litter(case.xdg)


# ---- LXC --------------------------------------------------------------------------------------------

def _lxc_env(case: Case, stop: str | None) -> dict:
    env = {"PATH": PATH, "PYTHONPATH": REPO, "PYTHONSAFEPATH": "1", "LANG": "C.UTF-8",
           "XDG_RUNTIME_DIR": case.xdg, "LXC_ROOTFS_MOUNT": case.rootfs, "LXC_NAME": case.cid,
           "LXC_HOOK_TYPE": "mount", "LXC_HOOK_SECTION": "lxc", "LXC_HOOK_VERSION": "1",
           "NVIDIA_VISIBLE_DEVICES": "0", "NVLT_CASE": case.dir, **case.fake.env()}
    if stop:
        env["NVLAUNCH_STOP_AT"] = stop
    else:
        env["NVLT_PROBE"] = "1"
    return env


def _lxc_cmd(case: Case) -> list:
    return [UNSHARE, "-m", "--propagation", "private", "/bin/sh", "-c", LXC_SCRIPT, "sh",
            case.rootfs, sys.executable, "-m", "nvlaunch", "lxc-hook"]


def _lxc_front(case: Case) -> None:
    tree = tree_snapshot(case.rootfs)
    before = host_state()
    proc = _popen(_lxc_cmd(case), _lxc_env(case, case.phase))
    _signal_and_check(case, proc, tree)
    _check_leftovers(case, before)
    r = subprocess.run(_lxc_cmd(case), env=_lxc_env(case, None), capture_output=True, text=True,
                       timeout=HANG, cwd="/")
    assert r.returncode == 0, f"the next LXC hook failed: {r.returncode} {r.stderr}"
    _assert_gpu(r.stdout, case.fake, "lxc")
    assert not _temp_files(case.rootfs) and not _cache_litter(case.xdg)


def _signal_and_check(case: Case, proc: subprocess.Popen, tree: dict) -> None:
    """For the hooks the test starts itself (the pid is the hook's): wait for the stop,
    signal, and for SIGTERM check the error path."""
    try:
        text = _wait_stopped_pipe(proc, case.phase)
        os.kill(proc.pid, case.sig)
        rc, _, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    err = text + err
    if case.sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL, (rc, err)
        return
    assert rc > 0, f"{case.front}: SIGTERM at {case.phase} ended it by the signal (rc {rc}), " \
                   f"not through its error path; stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln != STOPPED.format(case.phase).strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("nvlaunch: error: "), err
    after = tree_snapshot(case.rootfs)
    assert after == tree, "the rootfs changed: " + _tree_diff(tree, after)


# ---- CDI --------------------------------------------------------------------------------------------

def _cdi_state(case: Case) -> bytes:
    with open(os.path.join(case.bundle, "config.json"), "w") as f:
        json.dump({"ociVersion": "1.0.2", "root": {"path": case.rootfs},
                   "process": {"args": ["/bin/true"], "env": ["NVIDIA_VISIBLE_DEVICES=0"]}}, f)
    return json.dumps({"ociVersion": "1.0.2", "id": case.cid, "status": "creating",
                       "pid": os.getpid(), "bundle": case.bundle}).encode()


def _cdi_popen(case: Case, entry: dict, stop: str | None) -> subprocess.Popen:
    env = dict(e.split("=", 1) for e in entry["env"])
    env.update({"XDG_RUNTIME_DIR": case.xdg, "NVLT_CASE": case.dir})
    if stop:
        env["NVLAUNCH_STOP_AT"] = stop
    proc = subprocess.Popen(list(entry["args"]), executable=entry["path"],
                            env=env, cwd=case.rootfs, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc.stdin.write(_cdi_state(case))
    proc.stdin.close()
    proc.stdin = None
    return proc


def _cdi_links(entry: dict) -> list:
    args = entry["args"]
    return [args[i + 1].split("::") for i, a in enumerate(args) if a == "--link"]


def _cdi_front(case: Case, entry: dict) -> None:
    from nvlaunch.host import ldcache
    tree = tree_snapshot(case.rootfs)
    before = host_state()
    _signal_and_check(case, _cdi_popen(case, entry, case.phase), tree)
    _check_leftovers(case, before)
    rc, _, err = _finish(_cdi_popen(case, entry, None))
    assert (rc, err) == (0, ""), f"the next CDI hook failed: {rc} {err}"
    for target, link in _cdi_links(entry):
        assert os.readlink(case.rootfs + link) == target, link
    with open(os.path.join(case.rootfs, "etc/ld.so.cache"), "rb") as f:
        cache = {e.key: e.value for e in ldcache.parse(f.read())}
    assert cache.get("libcuda.so.1", "").endswith("/libcuda.so.1"), cache
    assert not _temp_files(case.rootfs)


# ---- the test -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("front,phase,sig", CASES, ids=[f"{f}-{p}-{s}" for f, p, s in CASES])
def test_kill_point(front, phase, sig, fake, stage_dir, request):
    case = Case(fake, front, phase, sig)
    try:
        if front in STAGE_KEYS:
            _runc_front(case, request.getfixturevalue("runc_spec"))
        elif front == "cdi":
            _cdi_front(case, request.getfixturevalue("cdi_hook"))
        elif front == "lxc":
            _lxc_front(case)
        else:
            _run_front(case, stage_dir)
    finally:
        case.cleanup()
