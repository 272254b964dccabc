"""Build nvlaunch and its syscall core (nvlaunch._ns, from nvlaunch/_ns.pyx, Cython 3)."""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PACKAGES = ("core", "host", "plan", "kernel", "exec", "render", "oci", "frontends", "setup", "image")

try:
    if not os.path.exists("nvlaunch/_ns.pyx"):
        raise ImportError
    from Cython.Build import cythonize
    ext = cythonize([Extension("nvlaunch._ns", ["nvlaunch/_ns.pyx"])],
                    compiler_directives={"language_level": 3}, quiet=True)
except ImportError:  # no Cython (or no .pyx): the C file an sdist carries
    ext = [Extension("nvlaunch._ns", ["nvlaunch/_ns.c"])]



class build_py_with_bundle(build_py):
    """build_py, then the launch modules' bundle (nvlaunch/_bundle.py) in the build tree,
    made by that module's own build() loaded from its file (the package needs no import)."""

    def run(self):
        super().run()
        import runpy
        build = runpy.run_path(os.path.join("nvlaunch", "_bundle.py"))["build"]
        build(os.path.join(self.build_lib, "nvlaunch"))


class build_ext_with_gate(build_ext):
    """build_ext, then the hooks.d entry's void gate (nvlaunch/_voidgate.c), a small
    executable, beside the extension (in place, or in the build tree for a wheel)."""

    def run(self):
        super().run()
        out = "nvlaunch" if self.inplace else os.path.join(self.build_lib, "nvlaunch")
        objects = self.compiler.compile([os.path.join("nvlaunch", "_voidgate.c")],
                                        output_dir=self.build_temp, extra_preargs=["-O2"])
        self.compiler.link_executable(objects, "_voidgate", output_dir=out)


setup(
    name="nvlaunch",
    cmdclass={"build_py": build_py_with_bundle, "build_ext": build_ext_with_gate},
    version="0.1.0",
    description="NVIDIA GPUs for Linux containers, rootless, for any runtime",
    packages=["nvlaunch"] + [f"nvlaunch.{p}" for p in PACKAGES],
    package_data={"nvlaunch": ["_ns.pyi", "py.typed"]},
    ext_modules=ext,
    python_requires=">=3.10",
    install_requires=["pyroute2", "nvidia-ml-py"],
    scripts=["bin/nvlaunch"],   # a plain script: see its header for why not an entry point
)
