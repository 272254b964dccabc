"""nvlaunch: NVIDIA GPUs for Linux containers, without Docker and without root.

The layers, from the bottom (docs/architecture.md; tests/unit/test_layers.py enforces
that imports only go downward):

    _ns        the Cython syscall core, imported by kernel/ alone
    core/      errors, records, consts, the logger, options, small file helpers
    host/      what the host has: HostView, the in-root resolver, ld cache, ELF, driver
               files, GPUs, libcuda's version, features, cgroup lookup
    plan/      what a container gets: request, capabilities, selection, requirements,
               device rules and their eBPF, plan records, the builder, the plan cache
    kernel/    the Kernel object (the whole surface executors use), namespaces, id maps
    exec/      what changes the system: in-root file ops, run's root, PID 1, inject, cgroups
    render/    plans as text and JSON, the CDI spec, LXC config lines
    oci/       OCI state and config.json, hook entries
    frontends/ run, hook, lxc-hook, cdi, ldcache, runtime, info/list/features
    setup/     one module per container system
    cli        the command line (one module): dispatch and the one error line

`python3 -m nvlaunch` run inside a source checkout imports the checkout's package (the
current directory comes first on sys.path), even where its syscall core was never built
and the same version is installed elsewhere (`pip install --target DIR .`, DIR on
PYTHONPATH).  Then the whole package is taken from that installed copy instead, and a
note on stderr says so: one coherent program rather than a checkout that cannot run.  A
copy of another version is never taken.  Where the core is built here, this costs one
listdir.

Then the modules a launch loads come from one precompiled file where it is current
(nvlaunch._bundle).
"""
import _imp
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _version_of(package_dir: str) -> str | None:
    try:
        with open(_os.path.join(package_dir, "__init__.py"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__ = "):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return None


def _use_a_built_copy() -> None:
    core = {"_ns" + suffix for suffix in _imp.extension_suffixes()}
    here = __path__[0]
    try:
        if core & set(_os.listdir(here)):
            return
    except OSError:
        return
    for entry in _sys.path:
        other = _os.path.join(entry or ".", "nvlaunch")
        try:
            if other != here and _os.path.realpath(other) != _os.path.realpath(here) \
                    and core & set(_os.listdir(other)) and _version_of(other) == __version__:
                _sys.stderr.write(f"nvlaunch: note: {here} has no built syscall core; running "
                                  f"the installed nvlaunch {__version__} in {other}\n")
                __path__[:] = [other]
                return
        except OSError:
            continue


def _serve_from_the_bundle() -> None:
    """The launch modules from this directory's bundle (nvlaunch._bundle), unless the
    package was just taken from another copy."""
    if __path__[0] == _os.path.dirname(__file__):
        from nvlaunch._bundle import install
        install(__path__[0])


_use_a_built_copy()
_serve_from_the_bundle()
