"""The import direction of docs/architecture.md, checked on the source: policy modules
never import the kernel layer (so they load without the compiled core and without root),
and only kernel.py imports the syscall core."""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "nvlaunch")
POLICY = ["consts", "errors", "host", "ldcache", "elf", "driver", "gpus", "require", "devices",
          "bpf", "request", "plan", "build", "rootfs"]


def imports_of(module: str) -> set:
    with open(os.path.join(PKG, module + ".py")) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("module", POLICY)
def test_policy_modules_do_not_touch_the_kernel(module):
    bad = {m for m in imports_of(module) if m in ("nvlaunch.kernel.real", "nvlaunch._ns")
           or m.startswith(("nvlaunch.kernel.real.", "nvlaunch._ns."))}
    assert not bad, f"{module} imports {bad}"


def test_only_kernel_imports_the_core():
    for name in os.listdir(PKG):
        if name.endswith(".py") and name != "kernel.py":
            mods = imports_of(name[:-3])
            assert not {m for m in mods if m == "nvlaunch._ns" or m.endswith("._ns")}, name


def test_policy_modules_import_without_the_extension():
    import subprocess
    import sys
    code = ("import sys; sys.modules['nvlaunch._ns'] = None\n"
            + "".join(f"import nvlaunch.{m}\n" for m in POLICY))
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(PKG, ".."),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
