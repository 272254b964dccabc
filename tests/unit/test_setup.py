"""`nvlaunch setup`, the runtime shim's config.json editing, and the hook's input parsing.

No root, no runtime: files go to tmp_path through --config / --wrapper.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nvlaunch.frontends import runtime_shim
from nvlaunch.oci import hooks as oci_hooks
from nvlaunch.oci import state as oci_state
from nvlaunch.setup import common as setup_common
from nvlaunch.setup import containerd as setup_containerd
from nvlaunch.setup import hooks_d as setup_hooks_d
from nvlaunch.core.errors import NvlaunchError, UsageError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOK = "/usr/local/bin/nvlaunch"
OCI_STAGES = {"prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop"}


def nvlaunch(*args, env=None, cwd=None):
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nvlaunch", *args], capture_output=True,
                          text=True, env=full, timeout=60, cwd=cwd)


def tree(d) -> dict:
    out = {}
    for dirpath, _, files in os.walk(d):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def check_hooks_d_schema(doc: dict) -> None:
    """The 1.0.0 schema of containers/common pkg/hooks/docs/oci-hooks.5.md."""
    assert set(doc) <= {"version", "hook", "when", "stages"}
    assert doc["version"] == "1.0.0"
    hook = doc["hook"]
    assert set(hook) <= {"path", "args", "env", "timeout"}
    assert os.path.isabs(hook["path"])
    assert all(isinstance(a, str) for a in hook.get("args", []))
    assert all(isinstance(e, str) and "=" in e for e in hook.get("env", []))
    when = doc["when"]
    assert when and set(when) <= {"always", "annotations", "commands", "hasBindMounts"}
    assert doc["stages"] and set(doc["stages"]) <= OCI_STAGES


# ---- podman / crio ------------------------------------------------------------------

@pytest.mark.parametrize("target", ["podman", "crio"])
def test_hooks_d_file(tmp_path, target):
    dest = tmp_path / "hooks.d" / "nvlaunch.json"
    proc = nvlaunch("--driver-root", "/opt/drv", "setup", target, "--config", str(dest),
                    "--hook-path", HOOK)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(dest.read_text())
    check_hooks_d_schema(doc)
    assert doc["hook"]["path"] == HOOK
    assert doc["hook"]["args"] == ["nvlaunch", "hook", "prestart"]
    assert doc["when"] == {"always": True}        # no env condition exists in the schema
    assert doc["stages"] == ["prestart"]
    assert "NVLAUNCH_DRIVER_ROOT=/opt/drv" in doc["hook"]["env"]
    assert not any(e.startswith("NVLAUNCH_DEV_ROOT=") for e in doc["hook"]["env"])


def test_hooks_d_defaults():
    assert setup_hooks_d.DEFAULT_PATHS["podman"] == "/usr/share/containers/oci/hooks.d/nvlaunch.json"
    assert setup_hooks_d.DEFAULT_PATHS["crio"] == "/etc/containers/oci/hooks.d/nvlaunch.json"


def test_hooks_d_no_cgroups_switch():
    env = setup_common.hook({}, {"no_cgroups": True, "hook_path": HOOK}).env
    assert "NVLAUNCH_NO_CGROUPS=1" in env


# ---- docker -------------------------------------------------------------------------

def test_docker_merge_keeps_existing_keys(tmp_path):
    dest = tmp_path / "daemon.json"
    dest.write_text(json.dumps({"log-driver": "journald", "data-root": "/srv/docker",
                                "runtimes": {"other": {"path": "/usr/bin/other"}},
                                "default-runtime": "runc"}))
    proc = nvlaunch("setup", "docker", "--config", str(dest), "--hook-path", HOOK,
                    "--bin-dir", str(tmp_path / "bin"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(dest.read_text())
    assert doc["log-driver"] == "journald" and doc["data-root"] == "/srv/docker"
    assert doc["default-runtime"] == "runc"
    assert doc["runtimes"]["other"] == {"path": "/usr/bin/other"}
    assert doc["runtimes"]["nvlaunch"] == {"path": HOOK, "runtimeArgs": ["runtime"]}
    # the previous file is kept as .bak
    assert json.loads((tmp_path / "daemon.json.bak").read_text())["log-driver"] == "journald"
    # idempotent
    before = dest.read_text()
    assert nvlaunch("setup", "docker", "--config", str(dest), "--hook-path", HOOK,
                    "--bin-dir", str(tmp_path / "bin")).returncode == 0
    assert dest.read_text() == before


def test_docker_new_file(tmp_path):
    dest = tmp_path / "etc" / "docker" / "daemon.json"
    assert nvlaunch("setup", "docker", "--config", str(dest), "--hook-path", HOOK,
                    "--bin-dir", str(tmp_path / "bin")).returncode == 0
    assert json.loads(dest.read_text()) == {"runtimes": {"nvlaunch": {"path": HOOK,
                                                                      "runtimeArgs": ["runtime"]}}}


def test_docker_refuses_broken_json(tmp_path):
    dest = tmp_path / "daemon.json"
    dest.write_text("{not json")
    proc = nvlaunch("setup", "docker", "--config", str(dest), "--hook-path", HOOK,
                    "--bin-dir", str(tmp_path / "bin"))
    assert proc.returncode == 125
    assert proc.stderr.startswith("nvlaunch: error: ") and proc.stderr.count("\n") == 1
    assert dest.read_text() == "{not json"


# ---- containerd ---------------------------------------------------------------------

def test_containerd_merge_appends_block_once(tmp_path):
    dest = tmp_path / "config.toml"
    original = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n'
    dest.write_text(original)
    wrapper = tmp_path / "nvlaunch-runtime"
    args = ("setup", "containerd", "--config", str(dest), "--wrapper", str(wrapper),
            "--hook-path", HOOK)
    assert nvlaunch(*args).returncode == 0
    text = dest.read_text()
    assert text.startswith(original)
    assert text.count(setup_containerd.MARK_BEGIN) == 1
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvlaunch]' in text
    assert 'runtime_type = "io.containerd.runc.v2"' in text
    assert f'BinaryName = "{wrapper}"' in text
    assert wrapper.read_text() == f'#!/bin/sh\nexec {HOOK} runtime "$@"\n'
    assert os.stat(wrapper).st_mode & 0o777 == 0o755
    assert nvlaunch(*args).returncode == 0
    assert dest.read_text() == text             # replaced in place, not appended again


@pytest.mark.parametrize("version,table", [
    (None, "plugins.cri.containerd.runtimes.nvlaunch"),
    (3, 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nvlaunch'),
])
def test_containerd_config_versions(version, table):
    text = "" if version is None else f"version = {version}\n"
    text += "[grpc]\n  address = \"/run/containerd/containerd.sock\"\n"
    merged = setup_containerd.containerd_merge(text, "nvlaunch", "/w")
    assert f"[{table}]" in merged and merged.startswith(text)


def test_containerd_new_file_is_version_2():
    merged = setup_containerd.containerd_merge("", "nvlaunch", "/w")
    assert merged.startswith("version = 2\n")


def test_containerd_refuses_foreign_definition():
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvlaunch]\n'
            '  runtime_type = "x"\n')
    with pytest.raises(UsageError):
        setup_containerd.containerd_merge(text, "nvlaunch", "/w")


# ---- runc ---------------------------------------------------------------------------

def test_runc_prints_instructions():
    proc = nvlaunch("setup", "runc", "--hook-path", HOOK)
    assert proc.returncode == 0
    assert f"{HOOK} runtime run --bundle" in proc.stdout
    assert '"prestart"' in proc.stdout


def test_runc_adds_hook_to_config(tmp_path):
    dest = tmp_path / "config.json"
    dest.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]},
                                "hooks": {"poststop": [{"path": "/bin/true"}]}}))
    for _ in range(2):
        assert nvlaunch("setup", "runc", "--config", str(dest), "--hook-path", HOOK).returncode == 0
    doc = json.loads(dest.read_text())
    assert doc["process"] == {"args": ["sh"]}
    assert doc["hooks"]["poststop"] == [{"path": "/bin/true"}]
    assert len(doc["hooks"]["prestart"]) == 1
    assert doc["hooks"]["prestart"][0]["args"] == ["nvlaunch", "hook", "prestart"]


# ---- --dry-run ----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["podman", "crio", "docker", "containerd", "runc"])
def test_dry_run_writes_nothing(tmp_path, target):
    (tmp_path / "existing.json").write_text('{"keep": 1}')
    (tmp_path / "config.toml").write_text("version = 2\n")
    dest = {"podman": "hooks.d/nvlaunch.json", "crio": "hooks.d/nvlaunch.json",
            "docker": "existing.json", "containerd": "config.toml", "runc": "existing.json"}[target]
    before = tree(tmp_path)
    args = ["setup", target, "--dry-run", "--config", str(tmp_path / dest), "--hook-path", HOOK]
    if target == "containerd":
        args += ["--wrapper", str(tmp_path / "bin" / "nvlaunch-runtime")]
    if target == "runc":
        (tmp_path / "existing.json").write_text('{"ociVersion": "1.0.2"}')
        before = tree(tmp_path)
    proc = nvlaunch(*args)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted(before)       # no new dirs or files
    assert f"would write {tmp_path / dest}" in proc.stdout
    if target == "docker":
        shown, _, hook = proc.stdout.split(":\n", 1)[1].partition("--- would write ")
        assert json.loads(shown)["keep"] == 1
        # the --gpus hook dockerd looks up, with an environment of its own
        assert hook.startswith("/usr/local/bin/nvidia-container-runtime-hook (mode 0755):\n")
        assert "exec /usr/bin/env -i PATH=" in hook and f"{HOOK} hook \"$@\"\n" in hook


def test_setup_usage_errors():
    assert nvlaunch("setup", "kubernetes").returncode == 125
    proc = nvlaunch("setup", "podman", "--bogus")
    assert proc.returncode == 125 and "unknown option --bogus" in proc.stderr


# ---- the runtime shim ---------------------------------------------------------------

@pytest.mark.parametrize("args,command,bundle", [
    (["--root", "/run/runc", "--log", "/l", "create", "--bundle", "/b", "id"], "create", "/b"),
    (["--root=/r", "create", "-b", "/b2", "--pid-file", "/p", "id"], "create", "/b2"),
    (["--systemd-cgroup", "run", "--bundle=/b3", "id"], "run", "/b3"),
    (["--debug", "create", "id"], "create", "CWD"),
    (["start", "id"], "start", None),
    (["--root", "/create", "state", "id"], "state", None),
    (["delete", "--force", "id"], "delete", None),
])
def test_parse_runtime_args(args, command, bundle, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    got = runtime_shim.parse_runtime_args(args)
    assert got == (command, str(tmp_path) if bundle == "CWD" else bundle)


def _config(env):
    return {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": env},
            "root": {"path": "rootfs"}, "hooks": {"poststop": [{"path": "/bin/true"}]}}


def test_patch_bundle(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(["NVIDIA_VISIBLE_DEVICES=0"]), indent=4))
    os.chmod(tmp_path / "config.json", 0o600)
    entry = oci_hooks.hook_entry(oci_hooks.invocation(HOOK, environ={"NVLAUNCH_DEV_ROOT": "/d"}))
    assert runtime_shim.patch_bundle(str(tmp_path), entry)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["hooks"]["prestart"] == [entry]
    assert doc["hooks"]["poststop"] == [{"path": "/bin/true"}]
    assert doc["root"] == {"path": "rootfs"} and doc["ociVersion"] == "1.0.2"
    assert "NVLAUNCH_DEV_ROOT=/d" in entry["env"]
    assert os.stat(tmp_path / "config.json").st_mode & 0o777 == 0o600
    assert not runtime_shim.patch_bundle(str(tmp_path), entry)           # once only
    assert sorted(os.listdir(tmp_path)) == ["config.json"]              # no temp file left


@pytest.mark.parametrize("env", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES="]])
def test_patch_bundle_leaves_non_gpu_containers(tmp_path, env):
    text = json.dumps(_config(env))
    (tmp_path / "config.json").write_text(text)
    assert not runtime_shim.patch_bundle(str(tmp_path),
                                     oci_hooks.hook_entry(oci_hooks.invocation(HOOK, environ={})))
    assert (tmp_path / "config.json").read_text() == text


def test_shim_execs_the_runtime_with_args_unchanged(tmp_path):
    """NVLAUNCH_RUNTIME is a script that prints its argv; the bundle gets the hook."""
    fake = tmp_path / "fake-runc"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    fake.chmod(0o755)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(_config(["NVIDIA_VISIBLE_DEVICES=all"])))
    proc = nvlaunch("runtime", "--root", "/r", "create", "--bundle", str(bundle), "my id",
                    env={"NVLAUNCH_RUNTIME": str(fake), "NVLAUNCH_HOOK_PATH": HOOK,
                         "NVLAUNCH_DRIVER_ROOT": "/drv"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["arg:--root", "arg:/r", "arg:create", "arg:--bundle",
                                        f"arg:{bundle}", "arg:my id"]
    hooks = json.loads((bundle / "config.json").read_text())["hooks"]["prestart"]
    assert hooks[0]["path"] == HOOK and "NVLAUNCH_DRIVER_ROOT=/drv" in hooks[0]["env"]
    # --runtime-path wins over NVLAUNCH_RUNTIME and is not passed on
    proc = nvlaunch("runtime", "--runtime-path", str(fake), "state", "x",
                    env={"NVLAUNCH_RUNTIME": "/nonexistent"})
    assert proc.stdout.splitlines() == ["arg:state", "arg:x"]


def test_shim_missing_runtime_is_one_error_line(tmp_path):
    proc = nvlaunch("runtime", "state", "x", env={"NVLAUNCH_RUNTIME": str(tmp_path / "none")})
    assert proc.returncode == 127
    assert proc.stderr.startswith("nvlaunch: error: ") and proc.stderr.count("\n") == 1


# ---- the hook's input ---------------------------------------------------------------

def test_selection_env_takes_only_nvidia_selection_variables():
    config = {"process": {"env": [
        "PATH=/x", "LD_PRELOAD=/evil.so", "NVLAUNCH_DRIVER_ROOT=/evil", "NVIDIA_VISIBLE_DEVICES=0",
        "NVIDIA_DRIVER_CAPABILITIES=compute", "NVIDIA_REQUIRE_CUDA=cuda>=12.0",
        "NVIDIA_DISABLE_REQUIRE=1", "NVIDIA_IMEX_CHANNELS=0", "NVIDIA_MIG_CONFIG_DEVICES=all",
        "NVIDIA_VISIBLE_DEVICES=1", "garbage", 42]}}
    assert oci_state.selection_env(config) == {
        "NVIDIA_VISIBLE_DEVICES": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute",
        "NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_DISABLE_REQUIRE": "1",
        "NVIDIA_IMEX_CHANNELS": "0"}
    assert oci_state.selection_env({}) == {}
    assert oci_state.selection_env({"process": {"env": None}}) == {}


def test_container_rootfs():
    assert oci_state.container_rootfs({"bundle": "/b"}, {"root": {"path": "rootfs"}}) == "/b/rootfs"
    assert oci_state.container_rootfs({"bundle": "/b"}, {"root": {"path": "/r/x/"}}) == "/r/x"
    # crun's `root` wins, relative to the bundle as crun passes root.path through
    assert oci_state.container_rootfs({"bundle": "/b", "root": "rootfs"},
                                     {"root": {"path": "/other"}}) == "/b/rootfs"
    with pytest.raises(UsageError):
        oci_state.container_rootfs({"bundle": "/b"}, {})


@pytest.mark.parametrize("data", [b"", b"  ", b"not json", b"[1]", b'{"id": "x"}'])
def test_read_state_errors(data):
    with pytest.raises(UsageError):
        oci_state.read_state(data)


def test_read_state_bundle_path_alias():
    assert oci_state.read_state(b'{"id": "x", "bundlePath": "/b"}')["bundle"] == "/b"


def test_hook_void_container_does_nothing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(["PATH=/bin"])))
    state = json.dumps({"ociVersion": "1.0.2", "id": "c", "pid": 1, "bundle": str(tmp_path)})
    proc = subprocess.run([sys.executable, "-m", "nvlaunch", "hook", "prestart"], input=state,
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": REPO, "NVLAUNCH_DRIVER_ROOT": "/nonexistent"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize("args,stdin,code,text", [
    (["hook", "bogus"], "{}", 125, "unknown stage 'bogus'"),
    (["hook"], "", 125, "no OCI state JSON on stdin"),
    (["hook", "prestart"], '{"id": "c", "bundle": "/nonexistent"}', 125,
     "/nonexistent/config.json"),
    (["hook", "poststop"], "", 0, ""),
])
def test_hook_errors_are_one_line(args, stdin, code, text):
    proc = subprocess.run([sys.executable, "-m", "nvlaunch", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": REPO})
    assert proc.returncode == code, proc.stderr
    if code:
        assert proc.stderr.startswith("nvlaunch: error: ") and proc.stderr.count("\n") == 1
        assert text in proc.stderr
    else:
        assert proc.stderr == ""


def test_hook_needs_a_pid_for_prestart(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(["NVIDIA_VISIBLE_DEVICES=0"])))
    with pytest.raises(NvlaunchError, match="pid"):
        oci_state.state_pid({"bundle": str(tmp_path)})


# ---- hook entries that run nvlaunch's script with python -S ---------------------------

def _script_copy(tmp_path, first_line: str) -> str:
    with open(os.path.join(REPO, "bin", "nvlaunch")) as f:
        body = f.read().split("\n", 1)[1]
    path = tmp_path / "nvlaunch"
    path.write_text(first_line + "\n" + body)
    path.chmod(0o755)
    return str(path)


def test_hook_entry_runs_the_script_with_python_S(tmp_path):
    from nvlaunch.oci.hooks import hook_entry, invocation, is_nvlaunch_hook

    def command(path):
        inv = invocation(path, environ={})
        return inv.path, list(inv.argv)
    script = _script_copy(tmp_path, "#!/usr/bin/python3")
    assert command(script) == ("/usr/bin/python3", ["/usr/bin/python3", "-I", "-S", script])
    entry = hook_entry(invocation(script, environ={}))
    assert entry["args"] == ["/usr/bin/python3", "-I", "-S", script, "hook", "prestart"]
    assert is_nvlaunch_hook(entry)
    # left as they are: an env shebang, a shebang with options, a script that is not ours
    for first in ("#!/usr/bin/env python3", "#!/usr/bin/python3 -S"):
        other = _script_copy(tmp_path, first)
        assert command(other) == (other, ["nvlaunch"])
    # our script's body without its declaration line is not taken for ours
    undeclared = tmp_path / "undeclared"
    with open(script) as f:
        lines = f.read().split("\n")
    undeclared.write_text("\n".join(lines[:1] + lines[2:]))
    assert command(str(undeclared)) == (str(undeclared), ["nvlaunch"])
    foreign = tmp_path / "foreign"
    foreign.write_text("#!/usr/bin/python3\nprint('hi')\n")
    assert command(str(foreign)) == (str(foreign), ["nvlaunch"])
    assert command("/nonexistent/nvlaunch") == ("/nonexistent/nvlaunch", ["nvlaunch"])


def test_setup_run_as_the_script_writes_the_package_command(tmp_path):
    """Run as nvlaunch's own script, setup writes `PYTHON -I -S -c CODE` for the package
    the script runs (no script start per container); the entry works as a hook."""
    script = _script_copy(tmp_path, f"#!{sys.executable}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]}}))
    proc = subprocess.run([script, "setup", "runc", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(config.read_text())["hooks"]["prestart"][0]
    assert entry["path"] == sys.executable
    assert entry["args"][:4] == [sys.executable, "-I", "-S", "-c"] and entry["args"][5:] == ["hook", "prestart"]
    # the directory of the package the script runs (this venv's, through its site-packages)
    theirs = subprocess.run([sys.executable, "-c", "import os, nvlaunch; "
                             "print(os.path.dirname(os.path.dirname(nvlaunch.__file__)))"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
                            cwd="/").stdout.strip()
    assert theirs and f"sys.path.insert(0, {theirs!r})" in entry["args"][4]
    assert f"gc.set_threshold({oci_hooks.GC_THRESHOLD})" in entry["args"][4]
    assert oci_hooks.is_nvlaunch_hook(entry)
    # the entry runs nvlaunch's hook: nothing to do for a container that asks for no GPU,
    # one error line for a state that is not JSON
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                                    "process": {"env": ["PATH=/bin"], "args": ["sh"]}}))
    state = json.dumps({"ociVersion": "1.0.2", "id": "c", "pid": 1, "bundle": str(bundle),
                        "status": "creating"})
    for stdin, code, err in ((state, 0, ""), ("{nope", 2, "nvlaunch: error: ")):
        r = subprocess.run(entry["args"], executable=entry["path"], env=dict(e.split("=", 1) for e in entry["env"]),
                           input=stdin, capture_output=True, text=True, timeout=60, cwd="/")
        assert (r.returncode != 0) == bool(code) and r.stdout == "", r
        assert r.stderr.startswith(err) and r.stderr.count("\n") == (1 if err else 0), r.stderr


def test_bin_nvlaunch_sets_the_gc_threshold_the_hook_command_does():
    with open(os.path.join(REPO, "bin", "nvlaunch")) as f:
        text = f.read()
    assert f"gc.set_threshold({oci_hooks.GC_THRESHOLD:_})" in text


def test_setup_with_a_python_script_hook_path(tmp_path):
    script = _script_copy(tmp_path, "#!/usr/bin/python3")
    dest = tmp_path / "hooks.d" / "nvlaunch.json"
    assert nvlaunch("setup", "podman", "--config", str(dest), "--hook-path", script).returncode == 0
    doc = json.loads(dest.read_text())
    check_hooks_d_schema(doc)
    assert doc["hook"]["path"] == "/usr/bin/python3"
    assert doc["hook"]["args"] == ["/usr/bin/python3", "-I", "-S", script, "hook", "prestart"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]}}))
    for _ in range(2):      # the second finds the first's entry
        assert nvlaunch("setup", "runc", "--config", str(config), "--hook-path",
                        script).returncode == 0
    assert len(json.loads(config.read_text())["hooks"]["prestart"]) == 1
