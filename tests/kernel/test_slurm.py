"""GPUs as a Slurm resource: a real Slurm (slurmctld, slurmd, munged) started here on
127.0.0.1 with a private configuration, four fake GPUs (tests/fakehost.py: real 195:N
device nodes, minors not in PCI order) as gres, and jobs run as the test user.

Two clusters, one after the other:
- "constrained": task/cgroup + proctrack/cgroup with ConstrainDevices=yes (cgroup v1 here),
  gres.conf listing the files in minor order (Slurm's ids: not PCI order);
- "unconstrained": proctrack/linuxproc + task/none, gres.conf in a scrambled order.
In both, a job's `nvlaunch run --gpus all` must get exactly the GPUs Slurm allocated (the
files of the Slurm ids in SLURM_STEP_GPUS / SLURM_JOB_GPUS), two concurrent jobs disjoint
ones, and `srun --container=BUNDLE` (the oci.conf of `nvlaunch setup slurm`) the step's.
Every daemon is stopped by its pid; state lives under /tmp; everything listens on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests.conftest import TEST_USER, needs_root, user_exists
from tests.fakehost import build_fake_host, build_rootfs, parse_devices, parse_kv

pytestmark = [pytest.mark.slow, needs_root("to run slurmctld, slurmd and munged and switch to the test user")]

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "scontrol")
HANG = 60          # hang guards only: nothing here is timed


def _missing() -> str | None:
    lacking = [d for d in DAEMONS if shutil.which(d, path="/usr/sbin:/usr/bin") is None]
    if lacking:
        return f"Slurm/munge not installed ({', '.join(lacking)}; scripts/bootstrap.sh adds slurm-wlm munge)"
    if not user_exists(TEST_USER):
        return f"no user {TEST_USER}; run scripts/bootstrap.sh"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cgroup_v1_devices() -> bool:
    """Whether a cgroup v1 devices hierarchy is mounted at /sys/fs/cgroup/devices (what
    CgroupPlugin=cgroup/v1 with ConstrainDevices needs)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == "/sys/fs/cgroup/devices" and fields[sep + 1] == "cgroup":
                return True
    return False


def _cgroup_v2_only() -> bool:
    return subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True,
                          text=True).stdout.strip() == "cgroup2fs"


class Cluster:
    """One private Slurm: munged, slurmctld and slurmd started as children (foreground),
    each stopped by its pid in stop()."""

    def __init__(self, base: str, gres_files: list, constrain: bool):
        self.base, self.constrain, self.procs = base, constrain, []
        j = lambda *p: os.path.join(base, *p)  # noqa: E731
        for d in ("etc", "munge", "ctld", "spool", "log"):
            os.makedirs(j(d), mode=0o755)
        self.conf = j("etc", "slurm.conf")
        key = j("munge", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as f:
            f.write(secrets.token_bytes(1024))
        sock = j("munge", "munge.socket")
        ctld, slurmd, srun_lo = _free_ports(3)
        cgroup_plugin = "cgroup/v2" if _cgroup_v2_only() else "cgroup/v1"
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=nvltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SrunPortRange={srun_lo}-{srun_lo + 40}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={j('ctld')}
SlurmdSpoolDir={j('spool')}
SlurmctldPidFile={j('ctld', 'slurmctld.pid')}
SlurmdPidFile={j('spool', 'slurmd.pid')}
SlurmctldLogFile={j('log', 'slurmctld.log')}
SlurmdLogFile={j('log', 'slurmd.log')}
SlurmdDebug=debug
ProctrackType={'proctrack/cgroup' if constrain else 'proctrack/linuxproc'}
TaskPlugin={'task/cgroup' if constrain else 'task/none'}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:{len(gres_files)} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        with open(j("etc", "gres.conf"), "w") as f:
            f.write("AutoDetect=off\n" + "".join(f"Name=gpu File={p}\n" for p in gres_files))
        with open(j("etc", "cgroup.conf"), "w") as f:
            f.write(f"CgroupPlugin={cgroup_plugin}\nCgroupAutomount=no\nConstrainCores=no\n"
                    f"ConstrainRAMSpace=no\nConstrainDevices={'yes' if constrain else 'no'}\n")
        self.env = {"SLURM_CONF": self.conf, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        try:
            self._start(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                         f"--pid-file={j('munge', 'munged.pid')}", f"--seed-file={j('munge', 'seed')}",
                         f"--log-file={j('log', 'munged.log')}"])
            self._wait(lambda: os.path.exists(sock), "munged")
            self._start(["slurmctld", "-D", "-i", "-f", self.conf])
            self._wait(lambda: self._ok(["scontrol", "ping"]), "slurmctld")
            self._start(["slurmd", "-D", "-N", "localhost", "-f", self.conf])
            self._wait(lambda: "idle" in self._out(["sinfo", "-h", "-o", "%T"]), "slurmd")
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list) -> None:
        with open(os.path.join(self.base, "log", argv[0] + ".out"), "w") as log:
            self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL))

    def _ok(self, argv: list) -> bool:
        return subprocess.run(argv, env=self.env, capture_output=True, timeout=HANG).returncode == 0

    def _out(self, argv: list) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=HANG).stdout

    def _wait(self, ok, what: str) -> None:
        end = time.monotonic() + HANG
        while time.monotonic() < end:
            if ok():
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: "
                                       f"{self.log(p.args[0] + '.out')}{self.log(p.args[0] + '.log')}")
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up: {self.log(what + '.log')}")

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.base, "log", name)) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def oci_conf(self) -> str:
        return os.path.join(self.base, "etc", "oci.conf")

    def stop(self) -> None:
        if self.procs and self.procs[-1].args[0] == "slurmd" and self.procs[-1].poll() is None:
            subprocess.run(["scancel", "--full", "-u", TEST_USER], env=self.env, capture_output=True,
                           timeout=HANG)
            end = time.monotonic() + HANG
            while self._out(["squeue", "-h"]).strip() and time.monotonic() < end:
                time.sleep(0.2)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(HANG)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []


@pytest.fixture(scope="module")
def world(stage_dir, runtime_dirs):
    """The fake host, a probe rootfs, an OCI bundle and an `nvl` wrapper the test user can run."""
    why = _missing()
    if why:
        pytest.skip(why)
    base = tempfile.mkdtemp(prefix="nvl-slurm-", dir="/tmp")
    os.chmod(base, 0o755)
    host = build_fake_host(os.path.join(base, "host"), gpus=4)
    assert host.real_nodes
    rootfs = build_rootfs(os.path.join(base, "rootfs"))
    bundle = os.path.join(base, "bundle")
    build_rootfs(os.path.join(bundle, "rootfs"))
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                   "process": {"args": ["/bin/sh"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                               "user": {"uid": 0, "gid": 0}}}, f)
    nvl = os.path.join(base, "nvl")
    with open(nvl, "w") as f:
        f.write(f"#!/bin/sh\nPYTHONPATH={stage_dir} exec /usr/bin/python3 -m nvlaunch \"$@\"\n")
    out = os.path.join(base, "out")
    os.mkdir(out)
    subprocess.run(["chmod", "-R", "a+rX", base], check=True)
    os.chmod(nvl, 0o755)
    os.chmod(out, 0o1777)
    env = {**host.env(), "XDG_RUNTIME_DIR": runtime_dirs(TEST_USER)}
    yield {"base": base, "host": host, "rootfs": rootfs, "bundle": bundle, "nvl": nvl, "out": out,
           "env": env}
    subprocess.run(["rm", "-rf", "--one-file-system", base], check=False)


GRES_ORDER = {"constrained": (2, 3, 0, 1),       # minors: Slurm id 0 = /dev/nvidia2 = PCI index 3
              "unconstrained": (2, 0, 3, 1)}


@pytest.fixture(scope="module", params=["constrained", "unconstrained"])
def cluster(request, world):
    constrain = request.param == "constrained"
    if constrain and not (_cgroup_v1_devices() or _cgroup_v2_only()):
        pytest.skip("ConstrainDevices needs a cgroup v1 devices hierarchy or cgroup v2 at /sys/fs/cgroup")
    base = os.path.join(world["base"], request.param)
    os.mkdir(base, 0o755)
    files = [world["host"].path(f"/dev/nvidia{m}") for m in GRES_ORDER[request.param]]
    c = Cluster(base, files, constrain)
    c.files = files
    request.addfinalizer(c.stop)
    return c


def _as_user(cluster, world, *argv, extra_env=None, popen=False):
    cmd = ["setpriv", f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--init-groups", *argv]
    env = {**cluster.env, **world["env"], **(extra_env or {})}
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=world["out"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=world["out"], capture_output=True, text=True, timeout=HANG)


INSIDE = ("probe devices; echo vis=$NVIDIA_VISIBLE_DEVICES; echo cvd=${CUDA_VISIBLE_DEVICES-unset}; "
          "echo procgpus=$(ls /proc/driver/nvidia/gpus)")


def _job_script(world, spec="all", then=""):
    """A task's command: Slurm's ids, then the container's view."""
    return (f"echo ids=${{SLURM_STEP_GPUS-${{SLURM_JOB_GPUS-}}}}; {world['nvl']} run --gpus {spec} "
            f"{world['rootfs']} /bin/sh -c '{INSIDE}{then}'")


def _expected(cluster, world, ids: str) -> list:
    """The fake GPUs of Slurm ids "0,2" (gres.conf File= order), in PCI order."""
    minors = {int(os.path.basename(cluster.files[int(i)])[len("nvidia"):]) for i in ids.split(",") if i}
    return [g for g in world["host"].gpus if g.minor in minors]


def _check_view(out: str, want: list) -> dict:
    devs = parse_devices(out)
    gpu_nodes = {p: d for p, d in devs.items() if p[len("/dev/nvidia"):].isdigit()}
    assert set(gpu_nodes) == {g.dev_path for g in want}, out
    assert all(d["open"] == "ENXIO" for d in gpu_nodes.values()), out     # none EPERM
    kv = parse_kv(out)
    assert kv["vis"] == (",".join(g.uuid for g in want) or "none"), out
    assert kv["cvd"] == "unset", out
    assert kv["procgpus"] == " ".join(g.bus_id for g in want), out
    return kv


def test_srun_all_is_the_step(cluster, world):
    r = _as_user(cluster, world, "srun", "--gres=gpu:2", "sh", "-c", _job_script(world))
    assert r.returncode == 0, r.stdout + r.stderr
    kv = parse_kv(r.stdout)
    want = _expected(cluster, world, kv["ids"])
    assert len(want) == 2
    _check_view(r.stdout, want)


def test_srun_index_counts_within_the_step(cluster, world):
    r = _as_user(cluster, world, "srun", "--gres=gpu:2", "sh", "-c", _job_script(world, "1"))
    assert r.returncode == 0, r.stdout + r.stderr
    want = _expected(cluster, world, parse_kv(r.stdout)["ids"])
    _check_view(r.stdout, want[1:])


def test_srun_gpu_outside_the_step_is_an_error(cluster, world):
    script = ("echo ids=$SLURM_STEP_GPUS; for g in " + " ".join(g.uuid for g in world["host"].gpus)
              + f"; do {world['nvl']} run --gpus $g {world['rootfs']} /bin/true; echo rc=$g=$?; done")
    r = _as_user(cluster, world, "srun", "--gres=gpu:1", "sh", "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    held = _expected(cluster, world, parse_kv(r.stdout)["ids"])
    for g in world["host"].gpus:
        assert f"rc={g.uuid}={0 if g in held else 125}" in r.stdout, r.stdout + r.stderr
        if g not in held:
            assert f"'{g.uuid}' ({g.uuid}, {g.bus_id}) is outside this allocation (Slurm job" in r.stderr


def test_srun_two_index_beyond_the_step(cluster, world):
    r = _as_user(cluster, world, "srun", "--gres=gpu:2", world["nvl"], "run", "--gpus", "2",
                 world["rootfs"], "/bin/true")
    assert r.returncode == 125
    assert "no GPU with index 2 (this allocation (Slurm job" in r.stderr and "has 2 GPUs: 0-1)" in r.stderr


def test_srun_without_gres_gets_no_gpu(cluster, world):
    r = _as_user(cluster, world, "srun", "sh", "-c", _job_script(world))
    assert r.returncode == 0, r.stdout + r.stderr
    _check_view(r.stdout, [])


def test_concurrent_jobs_get_disjoint_gpus(cluster, world):
    """Job A holds its GPUs (its container waits for a file) while job B runs."""
    go = os.path.join(world["out"], f"go-{cluster.constrain}")
    wait = f"; while [ ! -e {go} ]; do sleep 0.1; done"
    bind = f"--bind {world['out']}:{world['out']} {world['rootfs']}"
    a = _as_user(cluster, world, "srun", "--gres=gpu:2", "sh", "-c",
                 _job_script(world, then=wait).replace(world["rootfs"], bind), popen=True)
    try:
        end = time.monotonic() + HANG
        while "R" not in cluster._out(["squeue", "-h", "-o", "%t"]) and time.monotonic() < end:
            time.sleep(0.2)
        b = _as_user(cluster, world, "srun", "--gres=gpu:2", "sh", "-c", _job_script(world))
        assert b.returncode == 0, b.stdout + b.stderr
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
        ours = [ln for ln in listening if any(f'"{d}"' in ln for d in ("slurmctld", "slurmd", "srun"))]
        assert ours and all(ln.split()[3].startswith("127.0.0.1:") for ln in ours), listening
    finally:
        with open(go, "w"):
            pass
        out_a, err_a = a.communicate(timeout=HANG)
    assert a.returncode == 0, out_a + err_a
    want_a = _expected(cluster, world, parse_kv(out_a)["ids"])
    want_b = _expected(cluster, world, parse_kv(b.stdout)["ids"])
    _check_view(out_a, want_a)
    _check_view(b.stdout, want_b)
    assert len(want_a) == len(want_b) == 2 and not set(want_a) & set(want_b)


def test_sbatch_job_gets_its_gpus(cluster, world):
    script = os.path.join(world["out"], f"job-{cluster.constrain}.sh")
    out = os.path.join(world["out"], f"job-{cluster.constrain}.out")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n" + _job_script(world) + "\n")
    os.chmod(script, 0o755)
    r = _as_user(cluster, world, "sbatch", "--wait", "--gres=gpu:2", "-o", out, script)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        text = f.read()
    want = _expected(cluster, world, parse_kv(text)["ids"])
    assert len(want) == 2, text
    _check_view(text, want)


def test_srun_container_through_setup_slurm(cluster, world):
    """`nvlaunch setup slurm` writes the oci.conf; srun --container runs the bundle through
    `nvlaunch run --bundle` with the step's GPUs (Slurm 22.05 passes the runtime none of its
    GPU variables: the device cgroup is the source, so this needs ConstrainDevices)."""
    if not cluster.constrain:
        pytest.skip("srun --container on 22.05 without ConstrainDevices: the runtime is given no "
                    "GPU variables, so nvlaunch cannot tell the step's GPUs (docs/cluster.md)")
    host = world["host"]
    r = subprocess.run(["/usr/bin/python3", "-m", "nvlaunch", "--driver-root", host.driver_root,
                        "--dev-root", host.dev_root, "--proc-root", host.proc_root, "setup", "slurm",
                        "--hook-path", world["nvl"]],
                       env={**cluster.env, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))))}, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert f"wrote {cluster.oci_conf()}" in r.stdout
    try:
        os.chmod(cluster.oci_conf(), 0o644)
        r = _as_user(cluster, world, "srun", "--gres=gpu:2", f"--container={world['bundle']}",
                     "/bin/sh", "-c", INSIDE + "; echo ids=$SLURM_STEP_GPUS")
        assert r.returncode == 0, r.stdout + r.stderr + cluster.log("slurmd.log")
        gpu_nodes = {p: d for p, d in parse_devices(r.stdout).items() if p[len("/dev/nvidia"):].isdigit()}
        devs = set(gpu_nodes)
        # two nodes, both let through by the step's cgroup (the other two would give EPERM)
        assert len(devs) == 2 and all(d["open"] == "ENXIO" for d in gpu_nodes.values()), r.stdout
        log = cluster.log("slurmd.log")
        assert "unexpected replacement character" not in log and "RunTimeQuery failed" not in log
        assert "cvd=unset" in r.stdout
        vis = parse_kv(r.stdout)["vis"].split(",")
        assert {g.dev_path for g in host.gpus if g.uuid in vis} == devs
    finally:
        os.unlink(cluster.oci_conf())
