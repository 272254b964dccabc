"""The architecture of docs/architecture.md, checked on the source, over every import of
every module (function-level imports included):

    cli -> frontends, setup -> exec, render, oci -> plan -> host -> core
                               exec -> kernel -> _ns

Front ends never import each other; only kernel/ imports the syscall core; no two
modules import each other, directly or round a longer cycle; core/, host/ and plan/
load without the compiled core (so they import and unit-test without it and without
root)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "nvlaunch")

# package -> the packages its modules may import (besides their own package)
ALLOWED = {
    "core": set(),
    "host": {"core"},
    "plan": {"core", "host"},
    "image": {"core", "host"},
    "kernel": {"core", "_ns"},
    "oci": {"core", "host", "plan"},
    "render": {"core", "host", "plan", "oci"},
    "exec": {"core", "host", "plan", "kernel"},
    "frontends": {"core", "host", "plan", "kernel", "oci", "render", "exec", "image"},
    "setup": {"core", "host", "plan", "oci", "render", "exec"},
    "cli": {"core", "frontends", "setup"},
}
# the package's own top-level modules: what each may import
TOP_LEVEL = {"__main__": {"cli"}, "_ns": set(), "_bundle": set()}


def modules() -> dict:
    """dotted name -> file, for every module of the package."""
    out = {}
    for dirpath, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), PKG)[:-3].replace(os.sep, ".")
                rel = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                out["nvlaunch" + ("" if rel == "__init__" else "." + rel)] = os.path.join(dirpath, name)
    return out


MODULES = modules()


def imports_of(path: str) -> set:
    """Every nvlaunch module `path` imports, anywhere in the file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nvlaunch"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nvlaunch"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES or sub == "nvlaunch._ns" else node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            out.add(node.args[0].value)
    return out


def layer(module: str) -> str:
    """The package right under nvlaunch (or the top-level module's name: cli is one)."""
    return module.split(".")[1]


def test_every_module_is_in_a_layer():
    for mod in MODULES:
        if mod == "nvlaunch":
            continue
        assert layer(mod) in ALLOWED or layer(mod) in TOP_LEVEL, f"{mod}: in no layer"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "nvlaunch"))
def test_imports_go_only_downward(module):
    mine = layer(module)
    allowed = TOP_LEVEL[mine] if mine in TOP_LEVEL else ALLOWED[mine] | {mine}
    for imp in imports_of(MODULES[module]):
        if imp == "nvlaunch":
            continue
        target = layer(imp)
        assert target in allowed, f"{module} imports {imp}: {mine} may import only {sorted(allowed)}"
        if mine == "frontends" and target == "frontends":
            raise AssertionError(f"{module} imports {imp}: front ends never import each other")


def test_only_the_kernel_layer_imports_the_syscall_core():
    for mod, path in MODULES.items():
        if "nvlaunch._ns" in imports_of(path):
            assert layer(mod) == "kernel", f"{mod} imports nvlaunch._ns"


def test_cli_commands_name_front_ends_that_exist():
    from nvlaunch.cli import COMMANDS
    for command, (module, func) in COMMANDS.items():
        assert layer(module) in ("frontends", "setup"), command
        with open(MODULES[module]) as f:
            assert f"def {func}(" in f.read(), f"{command}: {module} has no {func}"


def test_no_import_cycles():
    graph = {m: {i for i in imports_of(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    graph["nvlaunch"] = set()       # the package's own __init__ imports nothing of it
    state: dict = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_function_level_imports(tmp_path):
    """The rule covers imports inside functions too (they were where cycles hid)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from nvlaunch.frontends import run\n    import nvlaunch.exec.inject\n")
    assert imports_of(str(f)) == {"nvlaunch.frontends.run", "nvlaunch.exec.inject"}


def test_low_layers_import_without_the_extension():
    low = sorted(m for m in MODULES if m != "nvlaunch"
                 and layer(m) in ("core", "host", "plan", "oci", "render", "image"))
    code = ("import sys; sys.modules['nvlaunch._ns'] = None\n"
            + "".join(f"import {m}\n" for m in low)
            + "assert 'nvlaunch.kernel.real' not in sys.modules, 'a low layer loaded the kernel'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(PKG, ".."),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
