"""nvlaunch as a package: an sdist from the tracked files alone, a wheel built from that
sdist, and the wheel installed into a fresh virtualenv giving a `nvlaunch` command with
the compiled core, which starts a container."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, needs_root

pytestmark = [pytest.mark.slow, needs_root("a container started by the installed command")]


def _sh(*argv, cwd=None, env=None):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_sdist_wheel_and_a_fresh_venv(tmp_path, rootfs):
    src = tmp_path / "src"
    files = _sh("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).stdout.split()
    for rel in files:                      # what a clean clone holds (and new files of this tree)
        if not os.path.isfile(os.path.join(REPO, rel)):
            continue
        os.makedirs(src / os.path.dirname(rel), exist_ok=True)
        shutil.copy2(os.path.join(REPO, rel), src / rel)
    py = sys.executable                    # the project's venv: setuptools, wheel, Cython
    _sh(py, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist"), cwd=src)
    sdist = glob.glob(str(tmp_path / "dist" / "nvlaunch-*.tar.gz"))
    assert len(sdist) == 1
    _sh(py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
        str(tmp_path / "wheels"), sdist[0])
    wheel = glob.glob(str(tmp_path / "wheels" / "nvlaunch-*.whl"))
    assert len(wheel) == 1
    venv = tmp_path / "venv"
    _sh("/usr/bin/python3", "-m", "venv", str(venv))
    _sh(str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", wheel[0])
    exe = str(venv / "bin" / "nvlaunch")
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _sh(exe, "--version", env=env, cwd="/").stdout
    assert out.startswith("nvlaunch ") and out.split()[1][0].isdigit(), out
    core = glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "nvlaunch" / "_ns.*.so"))
    assert core, "the wheel has no compiled core"
    run = _sh(exe, "run", "--no-gpu", rootfs, "/bin/echo", "from-the-wheel", env=env, cwd="/")
    assert run.stdout == "from-the-wheel\n"
    # the void gate is in the wheel, executable, and the hooks.d entry of the installed
    # command runs it
    gate = glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "nvlaunch" / "_voidgate"))
    assert gate and os.access(gate[0], os.X_OK), "the wheel has no void gate"
    spec = _sh(exe, "setup", "podman", "--dry-run", env=env, cwd="/").stdout
    assert f'"path": "{gate[0]}"' in spec, spec
    # the launch modules come from the wheel's bundle (nvlaunch._bundle), though pip gave
    # the installed sources new times, and name the installed files
    probe = ("import nvlaunch.frontends.run as m; "
             "print(type(m.__loader__).__name__, m.cmd_run.__code__.co_filename)")
    seen = _sh(str(venv / "bin" / "python"), "-I", "-c", probe, env=env, cwd="/").stdout.split()
    installed = glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "nvlaunch" / "frontends" / "run.py"))
    assert seen == ["BundleFinder", installed[0]]
