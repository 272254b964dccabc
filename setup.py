"""Build nvlaunch and its syscall core (nvlaunch._ns, from nvlaunch/_ns.pyx, Cython 3)."""
from setuptools import Extension, setup

PACKAGES = ("core", "host", "plan", "kernel", "exec", "render", "oci", "frontends", "setup", "image")

import os

try:
    if not os.path.exists("nvlaunch/_ns.pyx"):
        raise ImportError
    from Cython.Build import cythonize
    ext = cythonize([Extension("nvlaunch._ns", ["nvlaunch/_ns.pyx"])],
                    compiler_directives={"language_level": 3}, quiet=True)
except ImportError:  # no Cython (or no .pyx): the C file an sdist carries
    ext = [Extension("nvlaunch._ns", ["nvlaunch/_ns.c"])]

setup(
    name="nvlaunch",
    version="0.1.0",
    description="NVIDIA GPUs for Linux containers, rootless, for any runtime",
    packages=["nvlaunch"] + [f"nvlaunch.{p}" for p in PACKAGES],
    package_data={"nvlaunch": ["_ns.pyi", "py.typed"]},
    ext_modules=ext,
    python_requires=">=3.10",
    install_requires=["pyroute2", "nvidia-ml-py"],
    scripts=["bin/nvlaunch"],   # a plain script: see its header for why not an entry point
)
