"""A hook's guards: the environment it refuses, its time limit, and the isolated
interpreter every entry nvlaunch writes runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nvlaunch.core import interrupt
from nvlaunch.core.errors import UsageError
from nvlaunch.oci import hooks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(*env):
    return {"process": {"env": list(env)}}


@pytest.mark.parametrize("var", hooks.LOADER_VARS)
def test_loader_variables_are_refused(var):
    with pytest.raises(UsageError, match=var):
        hooks.check_environment({"PATH": "/bin", var: "/rootfs/x.so"})


def test_the_containers_environment_is_refused():
    config = _config("PATH=/usr/bin", "FOO=bar", "NVLAUNCH_DRIVER_ROOT=/rootfs/fake",
                     "NVIDIA_VISIBLE_DEVICES=all")
    inherited = {"PATH": "/usr/bin", "FOO": "bar", "NVLAUNCH_DRIVER_ROOT": "/rootfs/fake"}
    with pytest.raises(UsageError, match="container's environment"):
        hooks.check_environment(inherited, config)


@pytest.mark.parametrize("environ,env", [
    ({"PATH": "/usr/bin"}, ("PATH=/usr/bin", "HOME=/root", "NVIDIA_VISIBLE_DEVICES=0")),
    ({"PATH": "/usr/bin", "FOO": "other"}, ("PATH=/usr/bin", "FOO=bar")),
    ({"PATH": "/usr/bin"}, ()),
])
def test_an_entrys_own_environment_passes(environ, env):
    """Only PATH and friends in common, or different values: the entry's own env."""
    hooks.check_environment(environ, _config(*env))


def test_every_written_entry_carries_env_and_runs_isolated():
    inv = hooks.invocation(hook_path=None, gopts={}, environ={})
    entry = hooks.hook_entry(inv, "createContainer")
    assert entry["env"] and all("=" in e for e in entry["env"])
    assert not any(e.split("=")[0] in hooks.LOADER_VARS for e in entry["env"])
    if inv.path.endswith(("python", "python3")) or "python" in os.path.basename(inv.path):
        assert "-I" in entry["args"] and "-S" in entry["args"]
    assert hooks.is_nvlaunch_hook(entry)


@pytest.mark.parametrize("raw,want", [("", 30), ("5", 5), ("86400", 86400)])
def test_timeout_from(raw, want):
    assert interrupt.timeout_from({interrupt.ENV_TIMEOUT: raw}) == want


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "٣", "²", "99999999999", "x"])
def test_bad_timeouts(raw):
    with pytest.raises(UsageError, match=interrupt.ENV_TIMEOUT):
        interrupt.timeout_from({interrupt.ENV_TIMEOUT: raw})


def test_a_bounded_process_gives_up_through_its_error_path():
    """SIGALRM after the limit raises Interrupted inside a blocking read (a FIFO with no
    writer), so the caller's except/finally runs."""
    code = (f"import os, sys; sys.path.insert(0, {REPO!r})\n"
            "from nvlaunch.core import interrupt\n"
            "r, w = os.pipe()\n"
            "interrupt.bound(1)\n"
            "try:\n    os.read(r, 1)\n"
            "except interrupt.Interrupted as e:\n    print('undone:', e)\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("undone: gave up after 1 s")


@pytest.mark.parametrize("visible", [None, "", "void"])
def test_a_hook_with_nothing_to_do_loads_no_plan_module(tmp_path, visible):
    """A container that asks for no GPU (every container, where hooks.d installs the hook
    for all of them) exits 0 before the plan cache, discovery or an executor is imported."""
    import json
    env = ["PATH=/usr/bin"] + ([] if visible is None else [f"NVIDIA_VISIBLE_DEVICES={visible}"])
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"root": {"path": "rootfs"},
                                                      "process": {"env": env}}))
    state = json.dumps({"id": "c1", "pid": 1, "bundle": str(tmp_path)})
    code = ("import sys\nfrom nvlaunch.cli import main\nrc = main(['hook', 'prestart'])\n"
            "print(rc, ' '.join(sorted(m for m in sys.modules if m.startswith(('nvlaunch.plan.',"
            " 'nvlaunch.exec.', 'nvlaunch.host.driver', 'nvlaunch.kernel.')))))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, input=state, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    rc, _, loaded = r.stdout.strip().partition(" ")
    assert rc == "0" and r.stderr == ""
    assert loaded.split() == ["nvlaunch.plan.request"], loaded
