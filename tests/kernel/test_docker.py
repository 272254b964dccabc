"""Docker as its users type it: dockerd 20.10 (Debian's docker.io) with `nvlaunch setup docker`.

One dockerd for the module, started by the test in a private mount namespace (its mounts,
containerd's and the containers' never reach the host), with its own --data-root,
--exec-root, --pidfile and socket under a temporary directory, `--bridge=none
--iptables=false --ip-masq=false`, containerd as its own child, and a tmpfs on /etc/docker
(dockerd 20.10 writes key.json there).  dockerd's PATH starts with the --bin-dir that
`setup docker` wrote nvidia-container-runtime-hook into; the hook carries the fake host's
roots itself, and dockerd's environment has them for the `--runtime=nvlaunch` shim.
Containers run `--network none` from an image made with `docker import` of a probe rootfs;
no network is created, no registry is used.

Skips: not root; dockerd, docker or runc missing; dockerd not coming up (with its log).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, needs_root
from tests.fakehost import build_fake_host, build_rootfs, parse_devices, parse_kv
from tests.kernel.conftest import world_dir

pytestmark = [pytest.mark.slow, needs_root("dockerd")]

DOCKERD, DOCKER = shutil.which("dockerd"), shutil.which("docker")
COMPOSE, RUNC = shutil.which("docker-compose"), shutil.which("runc")
DOC = os.path.join(REPO, "docs", "runtimes", "docker.md")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE = "nvlt-probe:latest"
PROBE = ("probe devices; probe dlopen libcuda.so.1; echo NVD=$NVIDIA_VISIBLE_DEVICES; "
         "nvidia-smi -L; grep -c ' /usr/lib/x86_64-linux-gnu/libcuda.so.580' /proc/self/mountinfo")

if DOCKERD is None or DOCKER is None or RUNC is None:
    pytest.skip("dockerd, docker or runc not installed", allow_module_level=True)


def _kill_tree(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_daemon(proc, d: str, log, grace: float) -> None:
    """SIGTERM the daemon (by its pid), SIGKILL after `grace` s, then whatever it left
    running under its directory; its log closed."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _kill_tree(_pids_under(d))
    log.close()


def _pids_under(d: str) -> list:
    """Processes whose command line names the test's directory (dockerd's containerd and
    shims, which we started through dockerd)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if d.encode() in f.read():
                    out.append(int(name))
        except OSError:
            pass
    return out


class Daemon:
    def __init__(self, d: str, host):
        self.d, self.host = d, host
        self.sock = os.path.join(d, "docker.sock")
        self.bin = os.path.join(d, "bin")
        self.env = {"PATH": PATH, "DOCKER_HOST": f"unix://{self.sock}",
                    "DOCKER_CONFIG": os.path.join(d, "cli"), "HOME": d}

    def docker(self, *args, timeout=90, check=False):
        r = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r


def nvl(host, *args):
    return subprocess.run([sys.executable, "-m", "nvlaunch", "--driver-root", host.driver_root,
                           "--dev-root", host.dev_root, "--proc-root", host.proc_root, *args],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": PATH, "PYTHONPATH": REPO})


def doc_lines(prefix: str) -> list:
    """The lines of docs/runtimes/docker.md's ```sh blocks that start with `prefix`."""
    with open(DOC) as f:
        text = f.read()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(prefix):
                lines.append(line)
    return lines


@pytest.fixture(scope="module")
def daemon():
    d = world_dir("nvl-docker-")
    host = build_fake_host(os.path.join(d, "host"))
    xdg = os.path.join(d, "xdg")
    os.makedirs(xdg, mode=0o700)
    # the nvlaunch that both entries run: this tree (plan cache in the test's directory)
    wrapper = os.path.join(d, "nvlaunch")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nXDG_RUNTIME_DIR={xdg} PYTHONPATH={REPO} exec {sys.executable} "
                "-m nvlaunch \"$@\"\n")
    os.chmod(wrapper, 0o755)
    daemon = Daemon(d, host)
    config = os.path.join(d, "daemon.json")
    with open(config, "w") as f:
        json.dump({"storage-driver": "overlay2"}, f)
    # the set-up lines of the doc, pointed at the test's files
    for line in doc_lines("nvlaunch setup docker"):
        r = nvl(host, *line.split()[1:], "--config", config, "--bin-dir", daemon.bin,
                "--hook-path", wrapper)
        assert r.returncode == 0, (line, r.stderr)
    with open(config) as f:
        assert json.load(f)["runtimes"]["nvlaunch"] == {"path": wrapper, "runtimeArgs": ["runtime"]}
    os.makedirs("/etc/docker", exist_ok=True)
    made_etc = not os.listdir("/etc/docker")
    args = [DOCKERD, "--config-file", config, "--data-root", os.path.join(d, "data"),
            "--exec-root", os.path.join(d, "exec"), "--pidfile", os.path.join(d, "docker.pid"),
            "-H", f"unix://{daemon.sock}", "--bridge=none", "--iptables=false",
            "--ip-masq=false"]
    env = {"PATH": f"{daemon.bin}:{PATH}", "XDG_RUNTIME_DIR": xdg, "NVLAUNCH_HOOK_PATH": wrapper,
           **host.env()}
    log = open(os.path.join(d, "dockerd.log"), "w")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-euc",
                             "mount -t tmpfs -o mode=0755,size=1m nvlt-etc-docker /etc/docker; "
                             "exec \"$@\"", "sh", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/")
    try:
        deadline = time.monotonic() + 60
        while daemon.docker("version", timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(d, "dockerd.log")) as f:
                    pytest.skip("dockerd did not come up here: " + f.read()[-1500:])
            time.sleep(0.3)
        rootfs = build_rootfs(os.path.join(d, "rootfs"))
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        r = subprocess.run([DOCKER, "import", "-", IMAGE], stdin=tar.stdout, capture_output=True,
                           text=True, env=daemon.env, timeout=120)
        tar.wait()
        assert r.returncode == 0, r.stderr
        daemon.networks = daemon.docker("network", "ls", "-q", check=True).stdout.split()
        yield daemon
    finally:
        try:
            for cid in daemon.docker("ps", "-aq", timeout=30).stdout.split():
                daemon.docker("rm", "-f", cid, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
        _stop_daemon(proc, d, log, 30)
        if made_etc:
            try:
                os.rmdir("/etc/docker")
            except OSError:
                pass
        # the private mount namespace is gone with its last process: nothing is mounted
        # under d any more; the overlay2 layers are plain directories now
        shutil.rmtree(d, ignore_errors=True)


def run(daemon, *opts, cmd=PROBE, name=None, rm=True):
    args = ["run", "--network", "none"] + (["--rm"] if rm else []) + \
        (["--name", name] if name else []) + list(opts) + [IMAGE, "/bin/sh", "-c", cmd]
    return daemon.docker(*args)


def gpus_seen(daemon, out: str) -> list:
    """The indices of the fake host's GPUs whose node the container has (ENXIO: bound and
    allowed by the device cgroup)."""
    devs = parse_devices(out)
    seen = []
    for i, g in enumerate(daemon.host.gpus):
        if g.dev_path in devs:
            assert devs[g.dev_path]["open"] == "ENXIO", out
            seen.append(i)
    return seen


def uuids(daemon, indices) -> str:
    return ",".join(daemon.host.gpus[i].uuid for i in indices)


# ---- the doc's `docker run` lines -----------------------------------------------------

DOC_RUNS = doc_lines("docker run")
# what each line of the doc gives the container: GPU indices, libcuda loads, NVIDIA_VISIBLE_DEVICES
EXPECT = {"--gpus all": ([0, 1], True, "all"), "--gpus 1": ([0], True, "0"),
          "--gpus '\"device=0,1\"'": ([0, 1], True, "0,1"),
          "--gpus device=GPU-UUID": ([1], True, "uuid"),
          "--gpus 'device=1,\"capabilities=compute,utility\"'": ([1], True, "1"),
          "--runtime=nvlaunch -e NVIDIA_VISIBLE_DEVICES=1": ([1], True, "uuids"),
          "--runtime=nvlaunch --gpus all": ([0, 1], True, "uuids")}


def test_the_doc_lists_every_form():
    assert len(DOC_RUNS) == len(EXPECT), DOC_RUNS


@pytest.mark.parametrize("line", DOC_RUNS)
def test_docker_run_line_of_the_doc(daemon, line):
    import shlex
    words = shlex.split(line.replace("GPU-UUID", daemon.host.gpus[1].uuid))
    assert words[:3] == ["docker", "run", "--rm"] and "IMAGE" in words, line
    opts = words[3:words.index("IMAGE")]
    key = line.split("--rm ", 1)[1].split(" IMAGE", 1)[0]
    indices, libcuda, nvd = EXPECT[key]
    r = run(daemon, *opts)
    assert r.returncode == 0, r.stderr
    assert gpus_seen(daemon, r.stdout) == indices, r.stdout
    assert (parse_kv(r.stdout).get("dlopen") == "ok") == libcuda, r.stdout
    assert parse_kv(r.stdout).get("version") == "580.159.04", r.stdout
    for i in indices:
        assert f"UUID: {daemon.host.gpus[i].uuid}" in r.stdout, r.stdout
    want = {"uuid": daemon.host.gpus[1].uuid, "uuids": uuids(daemon, indices)}.get(nvd, nvd)
    assert f"NVD={want}\n" in r.stdout, r.stdout
    # injected once (--gpus with --runtime=nvlaunch: dockerd's hook only)
    assert r.stdout.rstrip().splitlines()[-1] == "1", r.stdout


def test_capabilities_utility_only(daemon):
    r = run(daemon, "--gpus", 'device=0,"capabilities=utility"', cmd=PROBE + "; true")
    assert r.returncode == 0, r.stderr
    assert gpus_seen(daemon, r.stdout) == [0] and parse_kv(r.stdout).get("dlopen") == "fail"
    assert f"UUID: {daemon.host.gpus[0].uuid}" in r.stdout      # nvidia-smi is utility's


def test_no_gpu_request_is_left_alone(daemon):
    for opts in ([], ["--runtime=nvlaunch"], ["--runtime=nvlaunch", "-e", "NVIDIA_VISIBLE_DEVICES=void"]):
        r = run(daemon, *opts, cmd="probe devices; ls /usr/lib/x86_64-linux-gnu")
        assert r.returncode == 0, r.stderr
        assert "/dev/nvidiactl" not in r.stdout and "libcuda" not in r.stdout, (opts, r.stdout)


@pytest.mark.parametrize("opts", [["--gpus", "device=9"],
                                  ["--runtime=nvlaunch", "-e", "NVIDIA_VISIBLE_DEVICES=9"]],
                         ids=["gpus", "runtime"])
def test_failure_is_docker_error_with_nvlaunch_line(daemon, opts):
    r = run(daemon, *opts)
    assert r.returncode != 0 and "probe" not in r.stdout
    lines = re.findall(r"nvlaunch: error: [^\n\\]*", r.stderr)
    assert len(lines) == 1 and "'9'" in lines[0], r.stderr
    assert r.stderr.startswith("docker: Error response from daemon:"), r.stderr


@pytest.mark.parametrize("opts", [["--gpus", "all"],
                                  ["--runtime=nvlaunch", "-e", "NVIDIA_VISIBLE_DEVICES=0"]],
                         ids=["gpus", "runtime"])
def test_no_leftovers_diff_commit_restart_exec(daemon, opts):
    name = "nvlt-" + opts[0].strip("-").split("=")[0]
    r = run(daemon, *opts, "-d", name=name, rm=False, cmd="sleep 600")
    assert r.returncode == 0, r.stderr
    try:
        for step in ("exec", "restart", "exec"):
            if step == "restart":
                daemon.docker("restart", "-t", "0", name, check=True)
                continue
            r = daemon.docker("exec", name, "/bin/sh", "-c", PROBE, check=True)
            assert gpus_seen(daemon, r.stdout), r.stdout
            assert parse_kv(r.stdout).get("dlopen") == "ok", r.stdout
        assert daemon.docker("diff", name, check=True).stdout == ""          # running
        daemon.docker("stop", "-t", "0", name, check=True)
        assert daemon.docker("diff", name, check=True).stdout == ""          # stopped
        daemon.docker("commit", name, f"{name}:committed", check=True)
        r = daemon.docker("run", "--rm", "--network", "none", f"{name}:committed",
                          "ls", "-aR", "/usr", "/etc", "/lib", check=True)
        assert "libcuda" not in r.stdout and "nvidia" not in r.stdout, r.stdout
    finally:
        daemon.docker("rm", "-f", name)
        daemon.docker("rmi", f"{name}:committed")


COMPOSE_FILE = """\
version: "3.8"
services:
  count:
    image: {image}
    network_mode: none
    command: ["/bin/sh", "-c", "{probe}"]
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: 1
              capabilities: [gpu]
  ids:
    image: {image}
    network_mode: none
    command: ["/bin/sh", "-c", "{probe}"]
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["1"]
              capabilities: [gpu, utility]
"""


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed")
def test_compose_gpu_reservations(daemon):
    d = os.path.join(daemon.d, "compose")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "docker-compose.yml"), "w") as f:
        f.write(COMPOSE_FILE.format(image=IMAGE, probe=(PROBE + "; true").replace('"', '\\"')
                                    .replace("$", "$$")))
    env = {**daemon.env, "COMPOSE_PROJECT_NAME": "nvlt"}
    try:
        for service, indices, libcuda in (("count", [0], True), ("ids", [1], False)):
            r = subprocess.run([COMPOSE, "run", "--rm", "-T", service], cwd=d, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert gpus_seen(daemon, r.stdout) == indices, r.stdout
            assert (parse_kv(r.stdout).get("dlopen") == "ok") == libcuda, r.stdout
            assert f"UUID: {daemon.host.gpus[indices[0]].uuid}" in r.stdout
    finally:
        subprocess.run([COMPOSE, "down"], cwd=d, env=env, capture_output=True, timeout=120)
    # compose made no network (every service is network_mode: none)
    assert daemon.docker("network", "ls", "-q", check=True).stdout.split() == daemon.networks


def test_setup_refuses_another_hook_without_force(daemon, tmp_path):
    other = tmp_path / "nvidia-container-runtime-hook"
    other.write_text("#!/bin/sh\nexec /usr/bin/nvidia-container-toolkit \"$@\"\n")
    r = nvl(daemon.host, "setup", "docker", "--config", str(tmp_path / "daemon.json"),
            "--bin-dir", str(tmp_path))
    assert r.returncode == 125 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("nvlaunch: error: setup docker:") and "--force" in r.stderr
    assert "nvidia-container-toolkit" in other.read_text()
    assert not (tmp_path / "daemon.json").exists()
    r = nvl(daemon.host, "setup", "docker", "--config", str(tmp_path / "daemon.json"),
            "--bin-dir", str(tmp_path), "--force", "--default-runtime")
    assert r.returncode == 0, r.stderr
    assert "nvlaunch hook" in other.read_text() or " hook " in other.read_text()
    assert json.loads((tmp_path / "daemon.json").read_text())["default-runtime"] == "nvlaunch"


# ---- containerd (docs/runtimes/containerd.md) -------------------------------------------

CONTAINERD, CTR = shutil.which("containerd"), shutil.which("ctr")


@pytest.mark.skipif(CONTAINERD is None or CTR is None, reason="containerd or ctr not installed")
def test_containerd_doc_setup_and_ctr_run(daemon):
    """docs/runtimes/containerd.md: `nvlaunch setup containerd` (config and wrapper under the
    test's directory), a containerd of our own (root, state, address; private mount
    namespace) started with that config, and the doc's `ctr run` line."""
    d = os.path.join(daemon.d, "ctd")
    os.makedirs(d, exist_ok=True)
    config, wrapper = os.path.join(d, "config.toml"), os.path.join(d, "nvlaunch-runtime")
    with open(os.path.join(REPO, "docs", "runtimes", "containerd.md")) as f:
        doc = f.read()
    setup = [ln.split("#")[0].split() for ln in re.findall(r"(?m)^nvlaunch setup containerd.*$", doc)]
    assert setup, "no set-up line in containerd.md"
    for words in setup:
        r = nvl(daemon.host, *words[1:], "--config", config, "--wrapper", wrapper,
                "--hook-path", os.path.join(daemon.d, "nvlaunch"))
        assert r.returncode == 0, r.stderr
    with open(config) as f:
        assert "BinaryName = " + json.dumps(wrapper) in f.read()
    tar = os.path.join(d, "image.tar")
    with open(tar, "wb") as f:
        assert subprocess.run([DOCKER, "save", IMAGE], stdout=f, env=daemon.env,
                              timeout=120).returncode == 0
    addr = os.path.join(d, "containerd.sock")
    env = {"PATH": PATH, "NVLAUNCH_HOOK_PATH": os.path.join(daemon.d, "nvlaunch"),
           **daemon.host.env()}
    log = open(os.path.join(d, "containerd.log"), "w")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", CONTAINERD,
                             "--config", config, "--root", os.path.join(d, "root"),
                             "--state", os.path.join(d, "state"), "--address", addr],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/")
    ctr = [CTR, "--address", addr, "--namespace", "nvlt"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(ctr + ["version"], capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, \
                open(os.path.join(d, "containerd.log")).read()[-1500:]
            time.sleep(0.2)
        r = subprocess.run(ctr + ["images", "import", tar], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        line = re.search(r"(?m)^With `ctr`: `(ctr run [^`]*)`", doc.replace("\n", " ").replace(
            "With `ctr`: `ctr", "\nWith `ctr`: `ctr"))
        assert line, "no ctr run line in containerd.md"
        words = line.group(1).split()
        words = [wrapper if w == "/usr/local/bin/nvlaunch-runtime" else w for w in words]
        image, cid = words[-2:]
        assert (image, cid) == ("IMAGE", "ID"), words
        cmd = ctr + words[1:-2] + ["--rm", "docker.io/library/" + IMAGE, "nvlt-c1",
                                   "/bin/sh", "-c", PROBE]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert gpus_seen(daemon, r.stdout) == [0], r.stdout
        assert parse_kv(r.stdout).get("dlopen") == "ok", r.stdout
        assert f"NVD={daemon.host.gpus[0].uuid}\n" in r.stdout, r.stdout       # the shim's UUIDs
    finally:
        subprocess.run(ctr + ["containers", "rm", "nvlt-c1"], capture_output=True, timeout=30)
        _stop_daemon(proc, d, log, 20)
