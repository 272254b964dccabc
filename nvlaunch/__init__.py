"""nvlaunch: NVIDIA GPUs for Linux containers, without Docker and without root.

`python3 -m nvlaunch` run inside a source checkout imports the checkout's package (the
current directory comes first on sys.path), even where its syscall core was never built
and the project is installed elsewhere (`pip install --target DIR .`, DIR on
PYTHONPATH).  Then the whole package is taken from that installed copy instead: one
coherent program, with its compiled core and byte code, rather than a checkout that
cannot run.  Where the core is built here (an install, or `build_ext --inplace`), this
costs one listdir.
"""
import _imp
import os as _os
import sys as _sys


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
                    and core & set(_os.listdir(other)):
                __path__[:] = [other]
                return
        except OSError:
            continue


_use_a_built_copy()
