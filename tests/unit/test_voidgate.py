"""nvlaunch/_voidgate.c, the hooks.d entry's program: it answers a container that asks for
no GPU without Python, and hands everything else to the Python hook.

Every case runs twice, through the gate and through the Python hook alone, and the two
must end the same (exit code, stdout, stderr).  Each case also says whether the gate
decides by itself: then a stub in place of the Python command must never run; in every
other case (any doubt, any bad input) the stub runs, with the state on its stdin."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nvlaunch.oci import hooks as oci_hooks
from tests.conftest import REPO

GATE = oci_hooks.VOID_GATE
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONSAFEPATH": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}


def test_the_gate_is_built():
    assert os.access(GATE, os.X_OK), f"{GATE}: not built (scripts/bootstrap.sh builds it)"


@pytest.fixture
def bundle(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    return d


def state(bundle, **extra) -> bytes:
    doc = {"ociVersion": "1.0.2", "id": "c1", "pid": 1, "bundle": str(bundle), "status": "creating"}
    doc.update(extra)
    return json.dumps(doc).encode()


def config(env=None, raw_process=None) -> bytes:
    process = raw_process if raw_process is not None else json.dumps({"env": env or [], "args": ["sh"]})
    return ('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": ' + process + "}").encode()


def python_argv() -> list:
    return list(oci_hooks.package_command(sys.executable)[1])


def run(argv, stdin: bytes, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=30, cwd="/")


def decided(tmp_path, stdin: bytes, env: dict, stage="prestart", extra=()) -> bool:
    """Whether the gate answered by itself: its command is a stub that records a run and
    the stdin it was given (which must be the state, whole)."""
    marker, seen = tmp_path / "ran", tmp_path / "stdin"
    for p in (marker, seen):
        if p.exists():
            p.unlink()
    stub = tmp_path / "stub"
    stub.write_text(f"#!/bin/sh\ntouch {marker}\ncat > {seen}\n")
    stub.chmod(0o755)
    r = run([GATE, str(stub), "-I", "-S", "-c", "x", *extra, "hook", stage], stdin, env)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r
    if marker.exists():
        assert seen.read_bytes() == stdin[:(1 << 20) + 1]
        return False
    return True


def both(stdin: bytes, env: dict, stage="prestart") -> subprocess.CompletedProcess:
    py = run(python_argv() + ["hook", stage], stdin, env)
    gate = run([GATE] + python_argv() + ["hook", stage], stdin, env)
    assert (gate.returncode, gate.stdout, gate.stderr) == (py.returncode, py.stdout, py.stderr)
    return py


NV = "NVIDIA_VISIBLE_DEVICES"


def raw(process: str) -> bytes:
    """A config.json whose process is the JSON text `process`, as written."""
    return config(raw_process=process)


# name -> (config.json, whether the gate decides alone)
ENV_CASES = {
    "no NVIDIA variable": (config(["PATH=/bin", "TERM=xterm"]), True),
    "empty": (config([f"{NV}="]), True),
    "void": (config([f"{NV}=void"]), True),
    "void with ASCII white space": (config([f"{NV}= void\t"]), True),
    "the last of two wins: void": (config([f"{NV}=0", f"{NV}=void"]), True),
    "the last of two wins: a GPU": (config([f"{NV}=void", f"{NV}=0"]), False),
    "all": (config([f"{NV}=all"]), False),
    "a GPU by index": (config([f"{NV}=0"]), False),
    "void behind a Unicode space (the Python hook decides)": (config([f"{NV}=\u3000void"]), False),
    "a non-ASCII value": (config([f"{NV}=\u00e9"]), False),
    "strings that are not KEY=VALUE and items that are not strings":
        (raw('{"env": ["NOEQUALS", 5, null, {"a": 1}, ["x"], "PATH=/bin"]}'), True),
    "the variable spelled with escapes": (raw('{"env": ["\\u004eVIDIA_VISIBLE_DEVICES=\\u0076oid"]}'), True),
    "an escaped GPU request": (raw('{"env": ["\\u004eVIDIA_VISIBLE_DEVICES=0"]}'), False),
    "the last process wins": (f'{{"process": {{"env": ["{NV}=0"]}}, "root": {{"path": "rootfs"}}, '
                              '"process": {"env": ["PATH=/bin"]}}'.encode(), True),
    "the last env wins": (raw(f'{{"env": ["{NV}=0"], "env": ["A=b"]}}'), True),
    "a process in the annotations does not count":
        (f'{{"annotations": {{"process": {{"env": ["{NV}=0"]}}}}, "process": {{"env": []}}}}'.encode(), True),
    "process is not an object": (raw('"just a string"'), True),
    "env is not a list": (raw('{"env": "NVIDIA_VISIBLE_DEVICES=0"}'), True),
    "Go's HTML escapes elsewhere": (raw('{"env": ["LABEL=\\u003cb\\u003e \\u0026 \\ud83d\\ude00"]}'), True),
    "a NUL in a value": (raw('{"env": ["NVIDIA_VISIBLE_DEVICES=void\\u0000x"]}'), False),
}


@pytest.mark.parametrize("name", sorted(ENV_CASES))
def test_the_containers_environment(tmp_path, bundle, name):
    text, alone = ENV_CASES[name]
    (bundle / "config.json").write_bytes(text)
    s = state(bundle)
    assert decided(tmp_path, s, ENV) is alone
    r = both(s, ENV)
    if alone:
        assert r.returncode == 0 and r.stderr == b""


def test_a_container_environment_like_the_hooks_own_is_left_to_python(tmp_path, bundle):
    """An entry without `env` runs with the container's: the Python hook refuses."""
    (bundle / "config.json").write_bytes(config(["FOO=bar", "PATH=/bin"]))
    s = state(bundle)
    assert not decided(tmp_path, s, {**ENV, "FOO": "bar"})
    assert both(s, {**ENV, "FOO": "bar"}).returncode != 0
    assert decided(tmp_path, s, {**ENV, "FOO": "other"})
    assert both(s, {**ENV, "FOO": "other"}).returncode == 0


@pytest.mark.parametrize("var,value", [("LD_LIBRARY_PATH", "/nonexistent"), ("NVLAUNCH_HOOK_TIMEOUT", "5"),
                                       ("NVLAUNCH_HOOK_TIMEOUT", "bogus"), ("NVLAUNCH_STOP_AT", "hook-plan")])
def test_the_hooks_own_settings_are_left_to_python(tmp_path, bundle, var, value):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = state(bundle)
    env = {**ENV, var: value}
    assert not decided(tmp_path, s, env)
    both(s, env)


def test_debug_output_is_python_s(tmp_path, bundle):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = state(bundle)
    for var in ("NVLAUNCH_DEBUG", "NVLAUNCH_DEBUG_FILE"):
        env = {**ENV, var: "1" if var == "NVLAUNCH_DEBUG" else str(tmp_path / "log")}
        assert not decided(tmp_path, s, env)
        r = run([GATE] + python_argv() + ["hook", "prestart"], s, env)
        assert r.returncode == 0
    assert "nothing to do" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("stage,alone", [("prestart", True), ("create-runtime", True), ("createRuntime", True),
                                         ("create-container", True), ("createContainer", True),
                                         ("poststart", False), ("bogus", False)])
def test_stages(tmp_path, bundle, stage, alone):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = state(bundle)
    assert decided(tmp_path, s, ENV, stage=stage) is alone
    both(s, ENV, stage=stage)


def test_any_other_command_line_is_left_to_python(tmp_path, bundle):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = state(bundle)
    assert not decided(tmp_path, s, ENV, extra=("--debug",))
    r = run([GATE], s, ENV)
    assert r.returncode != 0


def _states(bundle) -> dict:
    ok = state(bundle)
    return {
        "not JSON": b"{nope",
        "empty": b"",
        "white space": b" \n\t",
        "an array": b"[1, 2]",
        "no bundle": json.dumps({"id": "c1", "pid": 1}).encode(),
        "a relative bundle": state("relative/bundle"),
        "a bundle that is a number": json.dumps({"id": "c1", "bundle": 5}).encode(),
        "an empty bundle and a bundlePath": json.dumps({"id": "c1", "bundle": "", "bundlePath": str(bundle)}).encode(),
        "bundlePath only": json.dumps({"id": "c1", "bundlePath": str(bundle)}).encode(),
        "a NUL in the bundle": json.dumps({"id": "c1", "bundle": str(bundle) + "\0x"}).encode(),
        "NaN": ok[:-1] + b', "x": NaN}',
        "Infinity": ok[:-1] + b', "x": -Infinity}',
        "trailing data": ok + b" {}",
        "a BOM": b"\xef\xbb\xbf" + ok,
        "invalid UTF-8": ok[:-1] + b', "x": "\xff\xfe"}',
        "a lone surrogate": ok[:-1] + b', "x": "\\ud800"}',
        "a raw control character": ok[:-1] + b', "x": "a\x01b"}',
        "deep nesting": ok[:-1] + b', "x": ' + b"[" * 80 + b"]" * 80 + b"}",
        "a long number": ok[:-1] + b', "x": ' + b"1" * 200 + b"}",
        "a leading zero": ok[:-1] + b', "x": 01}',
        "a trailing comma": ok[:-1] + b', "x": [1,]}',
        "more than 1 MiB": ok[:-1] + b', "x": "' + b"a" * (1 << 20) + b'"}',
        "the bundle given twice, the last a number": ok[:-1] + b', "bundle": 7}',
    }


@pytest.mark.parametrize("name", sorted(_states("/b")))
def test_states(tmp_path, bundle, name):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = _states(bundle)[name]
    assert not decided(tmp_path, s, ENV)
    both(s, ENV)


def test_a_repeated_bundle_takes_the_last(tmp_path, bundle):
    (bundle / "config.json").write_bytes(config(["PATH=/bin"]))
    s = state(bundle)[:-1] + b', "bundle": "' + str(bundle).encode() + b'"}'
    other = state("/nonexistent")[:-1] + b', "bundle": "' + str(bundle).encode() + b'"}'
    for doc in (s, other):
        assert decided(tmp_path, doc, ENV)
        assert both(doc, ENV).returncode == 0


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dev-zero", "not JSON", "an array",
                                  "invalid UTF-8", "a raw control character", "a lone surrogate", "NaN",
                                  "more than 16 MiB", "trailing data", "empty"])
def test_config_files(tmp_path, bundle, kind):
    path = bundle / "config.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "not JSON":
        path.write_text("{nope")
    elif kind == "an array":
        path.write_text("[]")
    elif kind == "invalid UTF-8":
        path.write_bytes(config(["PATH=/bin", "X=\udcff"]).replace(b"\\udcff", b"\xff"))
    elif kind == "a raw control character":
        path.write_bytes(config(["PATH=/bin"]).replace(b"/bin", b"/b\x02in"))
    elif kind == "a lone surrogate":
        path.write_bytes(config(raw_process='{"env": ["X=\\udc00"]}'))
    elif kind == "NaN":
        path.write_bytes(config(raw_process='{"env": [], "x": NaN}'))
    elif kind == "more than 16 MiB":
        with open(path, "wb") as f:
            f.write(config(["PATH=/bin"]))
            f.truncate((16 << 20) + 1)
    elif kind == "trailing data":
        path.write_bytes(config(["PATH=/bin"]) + b"x")
    elif kind == "empty":
        path.write_bytes(b"")
    s = state(bundle)
    assert not decided(tmp_path, s, ENV)      # a FIFO: never waited on (the timeout says)
    # Python's reader takes a lone surrogate (the gate leaves it to Python); the rest fail
    assert (both(s, ENV).returncode == 0) == (kind == "a lone surrogate")


def test_setup_podman_writes_the_gate_entry(tmp_path):
    dest = tmp_path / "nvlaunch.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "setup", "podman", "--config", str(dest)],
                       capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert r.returncode == 0, r.stderr
    hook = json.loads(dest.read_text())["hook"]
    assert hook["path"] == GATE and hook["args"][0] == GATE
    assert hook["args"][2:5] == ["-I", "-S", "-c"] and hook["args"][6:] == ["hook", "prestart"]
    assert oci_hooks.is_nvlaunch_hook(hook)
    # a script named with --hook-path: no gate (it knows only the package command)
    script = tmp_path / "nvlaunch"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "setup", "podman", "--config", str(dest),
                        "--hook-path", str(script)], capture_output=True, text=True, timeout=60, cwd="/",
                       env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(dest.read_text())["hook"]["path"] == str(script)


def test_the_gates_limits_are_the_python_hooks():
    import re

    from nvlaunch.core import interrupt
    from nvlaunch.oci import state as oci_state
    with open(os.path.join(REPO, "nvlaunch", "_voidgate.c")) as f:
        text = f.read()

    def define(name):
        m = re.search(rf"^#define {name} (.+)$", text, re.M)
        assert m, name
        return eval(m.group(1))             # a C integer expression: (1 << 20), 30
    assert define("MAX_STATE") == oci_state.MAX_STATE
    assert define("MAX_CONFIG") == oci_state.MAX_CONFIG
    assert define("HOOK_TIMEOUT_S") == interrupt.HOOK_TIMEOUT_S
