"""The package from a source checkout whose syscall core was not built (as when
`python3 -m nvlaunch` runs in a checkout and the project is installed elsewhere)."""
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO


def _unbuilt_checkout(tmp_path) -> str:
    src = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO, "nvlaunch"), src / "nvlaunch",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.c"))
    return str(src)


def _python(cwd, code, pythonpath=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}   # and -S: no .pth adds the repo
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_an_unbuilt_checkout_runs_the_installed_copy(tmp_path):
    cwd = _unbuilt_checkout(tmp_path)
    r = _python(cwd, "import sys; sys.path.insert(0, ''); import nvlaunch, nvlaunch.kernel.real; "
                     "print(nvlaunch.kernel.real.__file__)", pythonpath=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.path.join(REPO, "nvlaunch", "kernel", "real.py")
    # not silently: the switch is said, naming both places
    assert f"{cwd}/nvlaunch has no built syscall core" in r.stderr
    assert os.path.join(REPO, "nvlaunch") in r.stderr


def test_an_unbuilt_checkout_never_takes_another_version(tmp_path):
    cwd = _unbuilt_checkout(tmp_path)
    init = os.path.join(cwd, "nvlaunch", "__init__.py")
    with open(init) as f:
        text = f.read()
    with open(init, "w") as f:
        f.write(text.replace('\n__version__ = "', '\n__version__ = "9.', 1))
    code = ("import sys; sys.path.insert(0, ''); from nvlaunch.core.errors import NvlaunchError\n"
            "try:\n    import nvlaunch.kernel.real\nexcept NvlaunchError as e:\n    print(e)")
    r = _python(cwd, code, pythonpath=REPO)
    assert r.returncode == 0, r.stderr
    assert "nvlaunch._ns is not built" in r.stdout
    assert "running the installed" not in r.stderr


def test_an_unbuilt_checkout_alone_says_how_to_build(tmp_path):
    cwd = _unbuilt_checkout(tmp_path)
    code = ("import sys; sys.path.insert(0, ''); from nvlaunch.core.errors import NvlaunchError\n"
            "try:\n    import nvlaunch.kernel.real\nexcept NvlaunchError as e:\n    print(e)")
    r = _python(cwd, code)
    assert r.returncode == 0, r.stderr
    assert "nvlaunch._ns is not built" in r.stdout and "build_ext --inplace" in r.stdout


def test_a_built_package_stays_where_it_is():
    import nvlaunch
    assert nvlaunch.__path__ == [os.path.join(REPO, "nvlaunch")]


def test_script_with_S_takes_site_paths_but_runs_no_pth_imports(tmp_path):
    """bin/nvlaunch under `python -S` (how the hook entries run it): the virtualenv's
    site-packages and the directory lines of its .pth files are on sys.path (nvlaunch is
    found through one), an import line of a .pth is not run.  Without -S, site runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_dir = next(venv.glob("lib/python*/site-packages"))
    marker = tmp_path / "pth-import-ran"
    (site_dir / "aa_dev.pth").write_text(f"# the source tree\n{REPO}\n")
    (site_dir / "zz_slow.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")
    script = os.path.join(REPO, "bin", "nvlaunch")
    py = str(venv / "bin" / "python")
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([py, "-S", script, "--help"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: nvlaunch"), r.stderr
    assert not marker.exists()
    r = subprocess.run([py, script, "--help"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: nvlaunch"), r.stderr
    assert marker.exists()
