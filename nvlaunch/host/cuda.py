"""The one dlopen of the host's libcuda: cuDriverGetVersion() for NVIDIA_REQUIRE_CUDA.

Loading the driver's libcuda runs its code in this process, so it happens only when a
requirement names cuda, outside plan building (plan.build stays pure): plan.cache asks
for it through plan.require's lazy `cuda` fact.
"""
from __future__ import annotations

import os

from nvlaunch.core.records import replace
from nvlaunch.host.driver_files import Driver


_cuda_cache: dict[tuple[str, int, int, int], int | None] = {}


def cuda_driver_version(driver: Driver) -> int | None:
    """cuDriverGetVersion() of the driver's libcuda (e.g. 13000 for CUDA 13.0), or None.

    This dlopen()s the host libcuda into this process, so it is only for
    NVIDIA_REQUIRE_CUDA checks, not the plain path.  Every failure (no libcuda, wrong
    architecture, missing symbol, a non-zero CUresult) gives None.  The answer is cached
    per file identity (inode, size, mtime).
    """
    lib = next((f for f in driver.files if f.kind == "lib" and f.name.startswith("libcuda.so.")),
               None)
    if lib is None:
        return None
    try:
        st = os.stat(lib.host_path)
    except OSError:
        return None
    key = (lib.host_path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _cuda_cache:
        return _cuda_cache[key]
    import ctypes       # not on the plain path
    value = None
    try:
        handle = ctypes.CDLL(lib.host_path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        fn = handle.cuDriverGetVersion
        fn.argtypes = [ctypes.POINTER(ctypes.c_int)]
        fn.restype = ctypes.c_int
        out = ctypes.c_int(0)
        if fn(ctypes.byref(out)) == 0 and out.value > 0:
            value = out.value
    except (OSError, AttributeError):
        value = None
    _cuda_cache[key] = value
    return value


def with_cuda_version(driver: Driver) -> Driver:
    """The same Driver with cuda_version filled in (see cuda_driver_version)."""
    return replace(driver, cuda_version=cuda_driver_version(driver))
