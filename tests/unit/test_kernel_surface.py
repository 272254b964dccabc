"""The Kernel object is the executors' whole way to change the system: exec/ never calls
os for a filesystem change (or opens a file for writing) itself, every method of
RealKernel is used somewhere (no dead surface), and the recording fake has them all."""
import ast
import os

import pytest

from tests.fakes import FakeKernel

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "nvlaunch")
CHANGES = {"mkdir", "makedirs", "rmdir", "removedirs", "symlink", "link", "unlink", "remove",
           "rename", "replace", "chmod", "fchmod", "chown", "fchown", "lchown", "mknod",
           "truncate", "ftruncate", "open", "write", "setuid", "setgid", "setgroups", "chdir",
           "fchdir", "chroot"}
# process plumbing that is no filesystem change: the pipes between P, PID 1 and the
# command, and the injector's report
ALLOWED = {("launch.py", "write"), ("enter.py", "write"), ("pid1.py", "write")}


def _sources(sub):
    d = os.path.join(PKG, sub)
    return {n: os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".py")}


def _real_kernel_methods():
    tree = ast.parse(open(os.path.join(PKG, "kernel", "real.py")).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RealKernel")
    return sorted(t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets)


@pytest.mark.parametrize("name,path", sorted(_sources("exec").items()))
def test_executors_change_nothing_but_through_the_kernel(name, path):
    for node in ast.walk(ast.parse(open(path).read())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "os" \
                and f.attr in CHANGES and (name, f.attr) not in ALLOWED:
            raise AssertionError(f"{name}:{node.lineno}: os.{f.attr}() outside the Kernel object")
        if isinstance(f, ast.Name) and f.id == "open" and len(node.args) > 1:
            mode = node.args[1]
            assert isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+"), \
                f"{name}:{node.lineno}: open() for writing outside the Kernel object"


def test_every_kernel_method_is_used():
    used = set()
    for dirpath, _, files in os.walk(PKG):
        for n in files:
            if n.endswith(".py") and n != "real.py":
                for node in ast.walk(ast.parse(open(os.path.join(dirpath, n)).read())):
                    if isinstance(node, ast.Attribute):
                        used.add(node.attr)
    unused = [m for m in _real_kernel_methods() if m not in used]
    assert not unused, f"RealKernel methods no executor calls: {unused}"


def test_the_fake_has_the_whole_surface():
    missing = [m for m in _real_kernel_methods() if not callable(getattr(FakeKernel, m, None))]
    assert not missing, f"FakeKernel lacks {missing}"
