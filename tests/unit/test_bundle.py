"""nvlaunch._bundle: the launch modules served from one precompiled file, each only while
its source is the one it was compiled from; a bundle that is not trusted as the .pyc
files beside it is ignored.  Each case imports a copy of the package in a fresh
interpreter (this one has imported nvlaunch already)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from nvlaunch import _bundle
from tests.conftest import REPO

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import nvlaunch.cli, nvlaunch.frontends.run, nvlaunch.exec.inject, nvlaunch.oci.hooks
import nvlaunch.setup.common
mods = {n: type(m.__loader__).__name__ for n, m in sys.modules.items() if n.startswith("nvlaunch")}
files = {n: m.__file__ for n, m in sys.modules.items() if n.startswith("nvlaunch")}
print(json.dumps({"loaders": mods, "files": files,
                  "finders": [type(f).__name__ for f in sys.meta_path]}))
"""


@pytest.fixture
def copy(tmp_path):
    """A copy of the package (sources and the built core) with a fresh bundle."""
    dest = tmp_path / "nvlaunch"
    shutil.copytree(os.path.join(REPO, "nvlaunch"), dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    _bundle.build(str(dest))
    return tmp_path


def probe(parent) -> dict:
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(parent)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_launch_modules_come_from_the_bundle(copy):
    seen = probe(copy)
    loaders = seen["loaders"]
    assert seen["finders"][0] == "BundleFinder"
    for name in ("nvlaunch.cli", "nvlaunch.frontends.run", "nvlaunch.exec.inject",
                 "nvlaunch.oci.hooks", "nvlaunch.core", "nvlaunch.plan.records"):
        assert loaders[name] == "BundleFinder", name
    # the package itself, the bundle's own module and the set-up commands load normally
    for name in ("nvlaunch", "nvlaunch._bundle", "nvlaunch.setup.common"):
        assert loaders[name] == "SourceFileLoader", name
    # __file__ is the source, as with a .pyc
    assert seen["files"]["nvlaunch.exec.inject"] == str(copy / "nvlaunch" / "exec" / "inject.py")


def test_an_edited_module_loads_from_its_source(copy):
    path = copy / "nvlaunch" / "exec" / "inject.py"
    path.write_text(path.read_text() + "\nEDITED = True\n")
    loaders = probe(copy)["loaders"]
    assert loaders["nvlaunch.exec.inject"] == "SourceFileLoader"
    assert loaders["nvlaunch.frontends.run"] == "BundleFinder"
    # an edit of the same size and a new time: the content hash tells
    other = copy / "nvlaunch" / "core" / "consts.py"
    text = other.read_text()
    assert " the " in text
    other.write_text(text.replace(" the ", " thE ", 1))
    assert probe(copy)["loaders"]["nvlaunch.core.consts"] == "SourceFileLoader"


def test_a_new_time_on_the_same_source_keeps_the_bundle(copy):
    """pip gives installed files the time of the install: the content hash decides."""
    path = copy / "nvlaunch" / "cli.py"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert probe(copy)["loaders"]["nvlaunch.cli"] == "BundleFinder"


def test_a_moved_package_names_its_files_where_they_are(copy, tmp_path):
    """A bundle built in one place (a wheel's build directory) and used in another."""
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(copy / "nvlaunch"), moved / "nvlaunch")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import nvlaunch.plan.request as r; "
            "print(type(r.__loader__).__name__, r.Request.from_env.__code__.co_filename)")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(moved)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["BundleFinder", str(moved / "nvlaunch" / "plan" / "request.py")], proc.stderr


def test_the_edited_code_is_what_runs(copy):
    path = copy / "nvlaunch" / "plan" / "request.py"
    path.write_text(path.read_text() + "\nMARK = 'edited'\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c",
                           "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import nvlaunch.plan.request as r; print(r.MARK)", str(copy)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "edited", proc.stderr


@pytest.mark.parametrize("spoil", ["group-writable", "other-writable", "symlink", "garbage",
                                   "truncated", "other-python", "other-format"])
def test_an_untrusted_or_foreign_bundle_is_ignored(copy, spoil):
    bundle = _bundle._file(str(copy / "nvlaunch"))
    if spoil.endswith("writable"):
        os.chmod(bundle, 0o664 if spoil == "group-writable" else 0o646)
    elif spoil == "symlink":
        os.rename(bundle, bundle + ".real")
        os.symlink(bundle + ".real", bundle)
    elif spoil == "garbage":
        with open(bundle, "wb") as f:
            f.write(b"\x00not marshal")
    elif spoil == "truncated":             # the index promises code past the end
        with open(bundle, "rb+") as f:
            f.truncate(os.path.getsize(bundle) - 100)
    else:
        import marshal
        with open(bundle, "rb") as f:
            data = f.read()
        size = int.from_bytes(data[:4], "little")
        fmt, magic, entries = marshal.loads(data[4:4 + size])
        if spoil == "other-python":
            magic = b"\x00\x00\r\n"
        else:
            fmt += 1
        head = marshal.dumps((fmt, magic, entries))
        with open(bundle, "wb") as f:
            f.write(len(head).to_bytes(4, "little") + head + data[4 + size:])
    seen = probe(copy)
    assert "BundleFinder" not in seen["finders"]
    assert seen["loaders"]["nvlaunch.cli"] == "SourceFileLoader"


def test_a_bundle_owned_by_someone_else_is_ignored(copy):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    os.chown(_bundle._file(str(copy / "nvlaunch")), 65534, 65534)
    assert "BundleFinder" not in probe(copy)["finders"]


def test_no_bundle_is_no_error(copy):
    os.unlink(_bundle._file(str(copy / "nvlaunch")))
    seen = probe(copy)
    assert "BundleFinder" not in seen["finders"]
    assert seen["loaders"]["nvlaunch.cli"] == "SourceFileLoader"


def test_the_bundle_holds_every_launch_module():
    names = set(_bundle.sources(os.path.join(REPO, "nvlaunch")))
    for mod in ("nvlaunch.cli", "nvlaunch.frontends.oci_hook", "nvlaunch.frontends.run",
                "nvlaunch.exec.pid1", "nvlaunch.kernel.real", "nvlaunch.plan.cache",
                "nvlaunch.host.ldcache", "nvlaunch.core.errors", "nvlaunch.oci.state"):
        assert mod in names, mod
    assert not any(n.startswith(("nvlaunch.setup", "nvlaunch.image", "nvlaunch.render"))
                   for n in names)
    assert "nvlaunch._bundle" not in names and "nvlaunch" not in names
