"""A fake NVIDIA GPU host tree and a small container rootfs, for tests on machines without a GPU.

Shaped after a real host (shared/reference/gpu-host-h200.txt: one H200, driver 580.159.04):

    build_fake_host(dest, gpus=2, ...) -> FakeHost
        One tree under `dest` that serves as driver root, dev root and proc root of the
        contract (NVLAUNCH_DRIVER_ROOT / _DEV_ROOT / _PROC_ROOT, see FakeHost.env()):
          usr/local/nvidia/lib64/  real ELF libraries with the real SONAMEs and links
                                   (libX.so.<ver>, libX.so.<N> -> libX.so.<ver>, libX.so -> libX.so.<N>)
          usr/local/nvidia/bin/    nvidia-smi (works, via libnvidia-ml), nvidia-debugdump, ...
          usr/local/cuda-13.0/     the CUDA compat DECOY libcuda.so.580.95.05 (first in the ld
                                   cache for libcuda.so.1!), toolkit libs (libcudart.so.13, ...)
                                   and stubs; none of these may be injected
          usr/lib/, lib -> usr/lib duplicates: absolute links into /usr/local/nvidia/lib64
          etc/ld.so.conf(.d), etc/ld.so.cache  a real cache made by this machine's ldconfig -r
          lib/firmware/nvidia/<ver>/, usr/share/{glvnd,vulkan}/..., etc/OpenCL/vendors/
          proc/driver/nvidia/...   version, params, registry, gpus/<bus>/information, capabilities
          proc/devices, proc/driver/nvidia-caps/mig-minors
          dev/nvidia*, dev/nvidia-caps/, dev/nvidia-caps-imex-channels/, dev/dri/  real device nodes
        On this machine the NVIDIA majors have no driver: open() of a node gives ENXIO, which the
        fake libcuda/libnvidia-ml (tests/probe/fakedrv/) read as "present and allowed by the
        device cgroup"; EPERM means the cgroup denied it, ENOENT that it was not injected.

    build_rootfs(dest, layout="debian"|"lib64", probe=True) -> dest
        busybox-static + this host's glibc runtime + /usr/bin/probe (tests/probe/probe.c).

    probe_binary() -> path of the compiled probe; parse_kv(), parse_devices() read its output.

Everything compiled is built once into a cache directory named after a hash of the C sources
and of this file and after the user (/tmp/nvlaunch-fakedrv-<hash>-uid<euid>/), shared by all
test processes of that user; a fake host or rootfs is then a copy of a cached template plus a
few small files: a few milliseconds.
Device nodes need root (mknod); without it they are empty regular files (FakeHost.real_nodes
is False), or with stand_ins=True symlinks to /dev/null: a real character device, so stat()
says S_IFCHR and code that insists on a character device accepts them, but with the wrong
device number (1:3) and opening like /dev/null.  Stand-ins serve tests whose assertions do not
depend on the device number or on what opening gives (a CDI spec names nodes only by path);
tests that need the NVIDIA majors or ENXIO need real nodes, hence root (tests/kernel/).
"""
from __future__ import annotations

import functools
import grp
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE_SOURCE = os.path.join(HERE, "probe", "probe.c")
FAKEDRV_DIR = os.path.join(HERE, "probe", "fakedrv")

DEFAULT_DRIVER_VERSION = "580.159.04"
DEFAULT_CUDA_VERSION = 13000
DECOY_DRIVER_VERSION = "580.95.05"      # the CUDA 13.0 compat libcuda on the reference host
DECOY_INIT_ERROR = 803                  # CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
GPU_MODEL = "NVIDIA H200"
MAX_GPUS = 32                           # mig-minors covers gpu0..gpu31

NVIDIA_LIB_DIR = "usr/local/nvidia/lib64"
NVIDIA_LIB32_DIR = "usr/local/nvidia/lib"
NVIDIA_BIN_DIR = "usr/local/nvidia/bin"
CUDA_DIR = "usr/local/cuda-13.0"
COMPAT_DIR = CUDA_DIR + "/compat"
TOOLKIT_LIB_DIR = CUDA_DIR + "/targets/x86_64-linux/lib"

# (stem, N): the driver libraries of the reference host.  SONAME is stem.so.N, or
# stem.so.<driver version> where N is None (those have no .so.N link, as on the real host).
DRIVER_LIBS = (
    ("libcuda", "1"), ("libcudadebugger", "1"), ("libnvidia-ml", "1"),
    ("libnvidia-ptxjitcompiler", "1"), ("libnvidia-nvvm", "4"), ("libnvidia-opencl", "1"),
    ("libnvidia-gpucomp", None), ("libnvidia-allocator", "1"), ("libnvidia-pkcs11-openssl3", None),
    ("libnvidia-cfg", "1"), ("libnvcuvid", "1"), ("libnvidia-encode", "1"),
    ("libnvidia-opticalflow", "1"), ("libvdpau_nvidia", "1"), ("libnvidia-eglcore", None),
    ("libnvidia-glcore", None), ("libnvidia-glsi", None), ("libnvidia-glvkspirv", None),
    ("libnvidia-tls", None), ("libnvidia-rtcore", None), ("libnvidia-fbc", "1"),
    ("libnvoptix", "1"), ("libGLX_nvidia", "0"), ("libEGL_nvidia", "0"),
    ("libGLESv2_nvidia", "2"), ("libGLESv1_CM_nvidia", "1"),
)
# Libraries with behaviour of their own; the rest are generic.c under their SONAME.
_LIB_SOURCES = {"libcuda": "libcuda.c", "libnvidia-ml": "libnvidia-ml.c"}
DRIVER_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
               "nvidia-cuda-mps-control", "nvidia-cuda-mps-server")
# CUDA toolkit libraries in the ld cache: (file name, SONAME, version they claim).
TOOLKIT_LIBS = (
    ("libcudart.so.13.0.96", "libcudart.so.13", "13.0.96"),
    ("libcublas.so.13.1.0.3", "libcublas.so.13", "13.1.0.3"),
    ("libnvrtc.so.13.0.88", "libnvrtc.so.13", "13.0.88"),
    ("libOpenCL.so.1.0.0", "libOpenCL.so.1", "3.0"),
)

# PCI bus ids of the default GPUs, in PCI order (index = position).  More than 8 continue at 0x80.
_BUS_IDS = ("0000:06:00.0", "0000:07:00.0", "0000:0a:00.0", "0000:0b:00.0",
            "0000:41:00.0", "0000:42:00.0", "0000:45:00.0", "0000:46:00.0")

# The major numbers of the reference host (nvidia and drm are fixed, the rest dynamic).
MAJOR_NVIDIA = 195
MAJOR_DRM = 226
MAJOR_UVM = 238
MAJOR_CAPS = 241
MAJOR_IMEX = 242
MINOR_CTL = 255
MINOR_MODESET = 254

# MIG capability minors, as the driver numbers them (nv-caps.c): config 1, monitor 2, then
# per GPU 15 GPU instances x (1 access + 8 compute instances), then fabric-imex-mgmt.
MIG_CONFIG_MINOR = 1
MIG_MONITOR_MINOR = 2
FABRIC_IMEX_MINOR = 3 + MAX_GPUS * 15 * 9      # 4323, as on real hosts

_VIDEO_GID_FALLBACK = 44


@dataclass(frozen=True)
class FakeGpu:
    """One fake GPU. `index` is its nvidia-smi index (PCI bus order); `minor` its /dev/nvidia<minor>."""
    index: int
    minor: int
    uuid: str
    bus_id: str
    model: str = GPU_MODEL

    @property
    def dev_path(self) -> str:
        return f"/dev/nvidia{self.minor}"


@dataclass(frozen=True)
class FakeHost:
    """A built fake host.  All roots are the same directory (`root`)."""
    root: str
    driver_root: str
    dev_root: str
    proc_root: str
    driver_version: str
    gpus: list
    cuda_version: int = DEFAULT_CUDA_VERSION
    real_nodes: bool = True
    stand_in_nodes: bool = False         # not real: symlinks to STAND_IN_NODE, not empty files

    def env(self) -> dict:
        """The contract's variables that point nvlaunch at this host."""
        return {"NVLAUNCH_DRIVER_ROOT": self.driver_root, "NVLAUNCH_DEV_ROOT": self.dev_root,
                "NVLAUNCH_PROC_ROOT": self.proc_root}

    def fake_sysroot_env(self) -> dict:
        """Variables that make the fake libcuda/libnvidia-ml read this tree's /dev and /proc
        when run on the host (outside a container), e.g. with LD_LIBRARY_PATH=lib_dir."""
        return {"NVLAUNCH_FAKE_SYSROOT": self.root}

    @property
    def lib_dir(self) -> str:
        """The host path of usr/local/nvidia/lib64 in this tree."""
        return os.path.join(self.driver_root, NVIDIA_LIB_DIR)

    @property
    def bin_dir(self) -> str:
        return os.path.join(self.driver_root, NVIDIA_BIN_DIR)

    def path(self, rel: str) -> str:
        """A path of the tree, given as on the real host ("/dev/nvidia0")."""
        return os.path.join(self.root, rel.lstrip("/"))

    def add_node(self, rel: str, major: int, minor: int, mode: int = 0o666) -> str:
        """One more device node ("/dev/nvidia-caps/nvidia-cap5"), of the kind the others
        are (real, stand-in or empty file); returns its path."""
        path = self.path(rel)
        _mknod(path, major, minor, mode, 0, self.stand_in_nodes)
        return path

    def rewrite(self, rel: str, text: str) -> None:
        """Replace a file of the tree ("/proc/driver/nvidia/version"), keeping its mode
        (most of /proc is 0444: only root could simply open it for writing)."""
        path = self.path(rel)
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        os.unlink(path)
        _write(path, text, mode)


# --------------------------------------------------------------------------------------------
# Build cache: everything compiled lives in one directory per version of the sources.

@functools.lru_cache(maxsize=None)
def cache_dir() -> str:
    """/tmp/nvlaunch-fakedrv-<hash of the C sources and this file>-uid<euid>; made on first use."""
    h = hashlib.sha256()
    sources = sorted(os.path.join(FAKEDRV_DIR, f) for f in os.listdir(FAKEDRV_DIR)
                     if f.endswith(".c"))
    for path in [*sources, PROBE_SOURCE, os.path.abspath(__file__)]:
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    # One per user: another user's cache is neither writable nor to be trusted.
    path = os.path.join(tempfile.gettempdir(),
                        f"nvlaunch-fakedrv-{h.hexdigest()[:16]}-uid{os.geteuid()}")
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return tempfile.mkdtemp(prefix="nvlaunch-fakedrv-")      # someone else's: build anew
    return path


def _gcc(out: str, args: list) -> str:
    """Run gcc ARGS -o OUT unless OUT exists; atomic, so parallel test processes may race."""
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}-{id(args)}"
    proc = subprocess.run(["gcc", "-O2", "-Wall", *args, "-o", tmp],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def _check_version(version: str) -> str:
    if not re.fullmatch(r"[0-9A-Za-z._-]+", version):
        raise ValueError(f"bad version string {version!r}")
    return version


def _lib_job(source: str, soname: str, version: str, cuda_version: int = DEFAULT_CUDA_VERSION,
             init_error: int = 0) -> tuple:
    """(cached output path, gcc args) of a fake shared library."""
    _check_version(version)
    tag = f"{soname}@{version}"
    if source != "generic.c":
        tag += f"-cuda{cuda_version}-err{init_error}"
    if source == "libcuda.c":
        tag += "-syslibs2"
    out = os.path.join(cache_dir(), "lib", tag + ".so")
    args = ["-shared", "-fPIC", f"-Wl,-soname,{soname}", f'-DFAKE_DRIVER_VERSION="{version}"',
            f"-DFAKE_CUDA_VERSION={int(cuda_version)}", f"-DFAKE_INIT_ERROR={int(init_error)}",
            os.path.join(FAKEDRV_DIR, source)]
    if source == "libcuda.c":
        args += SYSLIB_LINK_ARGS
    return out, args


# The real libcuda and nvidia-smi need libm.so.6 and libpthread.so.0 besides libc (DT_NEEDED);
# so do the fake ones, and the fake host has copies of this machine's in its library
# directory and ld cache (SYSLIBS), as the real host has its own.
SYSLIBS = ("libm.so.6", "libpthread.so.0")
SYSLIB_LINK_ARGS = ["-Wl,--no-as-needed", "-lm", "-l:libpthread.so.0", "-Wl,--as-needed"]


def _bin_job(source: str, name: str) -> tuple:
    args = [os.path.join(FAKEDRV_DIR, source), "-ldl"]
    if name == "nvidia-smi":
        name, args = "nvidia-smi-syslibs2", args + SYSLIB_LINK_ARGS
    return os.path.join(cache_dir(), "bin", name), args


def _build_all(jobs: list) -> None:
    """Compile the missing ones of [(out, args)], in parallel."""
    missing = [j for j in jobs if not os.path.exists(j[0])]
    if not missing:
        return
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for fut in [pool.submit(_gcc, out, args) for out, args in missing]:
            fut.result()


@functools.lru_cache(maxsize=None)
def probe_binary() -> str:
    """The compiled in-container probe (tests/probe/probe.c), dynamically linked, -ldl."""
    return _gcc(os.path.join(cache_dir(), "bin", "probe"), [PROBE_SOURCE, "-ldl"])


def _publish(build, final: str) -> str:
    """Build a template directory with build(tmpdir) and rename it to `final` atomically."""
    if os.path.isdir(final):
        return final
    tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=os.path.dirname(final))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return final


# --------------------------------------------------------------------------------------------
# The driver tree (everything under the driver root); depends only on the versions.

def _symlink(target: str, link: str) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _install(src: str, dst: str, mode: int = 0o755) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _install_versioned(root: str, libdir: str, built: str, stem: str, version: str,
                       n: str | None) -> list:
    """libdir/stem.so.<version> plus its relative links; returns the link names made."""
    d = os.path.join(root, libdir)
    real = f"{stem}.so.{version}"
    _install(built, os.path.join(d, real))
    if n is None:
        _symlink(real, os.path.join(d, f"{stem}.so"))
        return [f"{stem}.so"]
    _symlink(real, os.path.join(d, f"{stem}.so.{n}"))
    _symlink(f"{stem}.so.{n}", os.path.join(d, f"{stem}.so"))
    return [f"{stem}.so.{n}", f"{stem}.so"]


EGL_VENDOR_JSON = """{
    "file_format_version" : "1.0.0",
    "ICD" : {
        "library_path" : "libEGL_nvidia.so.0"
    }
}
"""
VULKAN_ICD_JSON = """{
    "file_format_version" : "1.0.1",
    "ICD": {
        "library_path": "libGLX_nvidia.so.0",
        "api_version" : "1.4.312"
    }
}
"""
VULKAN_LAYERS_JSON = """{
    "file_format_version" : "1.0.0",
    "layer": {
        "name": "VK_LAYER_NV_optimus",
        "type": "INSTANCE",
        "library_path": "libGLX_nvidia.so.0",
        "api_version" : "1.4.312",
        "implementation_version" : "1",
        "description" : "NVIDIA Optimus layer",
        "functions": {
            "vkGetInstanceProcAddr": "vk_optimusGetInstanceProcAddr",
            "vkGetDeviceProcAddr": "vk_optimusGetDeviceProcAddr"
        },
        "enable_environment": {
            "__NV_PRIME_RENDER_OFFLOAD": "1"
        },
        "disable_environment": {
            "DISABLE_LAYER_NV_OPTIMUS_1": ""
        }
    }
}
"""


def _ld_conf(with_decoy: bool) -> dict:
    """etc/ld.so.conf.d files.  The compat dir sorts first, so the first ld-cache entry for
    libcuda.so.1 is the decoy; /lib and /usr/lib are ldconfig's built-in dirs (searched last),
    which is how the reference host's cache gets its /lib/libcuda.so.1 duplicates."""
    conf = {
        "010_nvidia.conf": "/usr/local/nvidia/lib64\n/usr/local/nvidia/lib\n",
        "020_cuda.conf": f"/{TOOLKIT_LIB_DIR}\n",
        "libc.conf": "# libc default configuration\n/usr/local/lib\n",
        "x86_64-linux-gnu.conf": "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n"
                                 "/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
    }
    if with_decoy:
        conf["000_cuda-compat.conf"] = f"/{COMPAT_DIR}\n"
    return conf


def _driver_jobs(version: str, cuda_version: int, with_decoy: bool) -> dict:
    """Every compiled file of a driver tree: name -> (out, gcc args)."""
    jobs = {}
    for stem, n in DRIVER_LIBS:
        soname = f"{stem}.so.{n or version}"
        jobs[stem] = _lib_job(_LIB_SOURCES.get(stem, "generic.c"), soname, version, cuda_version)
    if with_decoy:
        jobs["decoy"] = _lib_job("libcuda.c", "libcuda.so.1", DECOY_DRIVER_VERSION, cuda_version,
                                 DECOY_INIT_ERROR)
    jobs["stub-cuda"] = _lib_job("generic.c", "libcuda.so.1", "stub")
    jobs["stub-ml"] = _lib_job("generic.c", "libnvidia-ml.so.1", "stub")
    jobs["libfoo"] = _lib_job("generic.c", "libfoo.so.1", "1.0.0")
    for fname, soname, tver in TOOLKIT_LIBS:
        jobs[fname] = _lib_job("generic.c", soname, tver)
    jobs["nvidia-smi"] = _bin_job("nvidia-smi.c", "nvidia-smi")
    jobs["fakebin"] = _bin_job("fakebin.c", "fakebin")
    return jobs


def _build_driver_tree(root: str, version: str, cuda_version: int, with_decoy: bool) -> None:
    jobs = _driver_jobs(version, cuda_version, with_decoy)
    _build_all(list(jobs.values()))
    built = {k: out for k, (out, _) in jobs.items()}
    j = functools.partial(os.path.join, root)

    # usr/local/nvidia/{lib64,lib,bin}: the driver proper.
    for stem, n in DRIVER_LIBS:
        links = _install_versioned(root, NVIDIA_LIB_DIR, built[stem], stem, version, n)
        # The reference host has every lib also in /usr/lib (as absolute links), so the cache
        # holds a second entry for each (seen through the merged-/usr /lib).
        for name in links:
            _symlink(f"/{NVIDIA_LIB_DIR}/{name}", j("usr/lib", name))
    os.makedirs(j(NVIDIA_LIB32_DIR))
    for name in DRIVER_BINS:
        _install(built["nvidia-smi" if name == "nvidia-smi" else "fakebin"], j(NVIDIA_BIN_DIR, name))
    _symlink(f"/{NVIDIA_BIN_DIR}/nvidia-smi", j("usr/bin/nvidia-smi"))
    _symlink("usr/lib", j("lib"))                    # merged /usr

    # CUDA: the compat decoy, the toolkit, the stubs.  None of it belongs in a container.
    if with_decoy:
        _install_versioned(root, COMPAT_DIR, built["decoy"], "libcuda", DECOY_DRIVER_VERSION, "1")
    for fname, soname, _ in TOOLKIT_LIBS:
        _install(built[fname], j(TOOLKIT_LIB_DIR, fname))
        _symlink(fname, j(TOOLKIT_LIB_DIR, soname))
        _symlink(soname, j(TOOLKIT_LIB_DIR, soname.rsplit(".so", 1)[0] + ".so"))
    _install(built["stub-cuda"], j(TOOLKIT_LIB_DIR, "stubs/libcuda.so"))
    _install(built["stub-ml"], j(TOOLKIT_LIB_DIR, "stubs/libnvidia-ml.so"))
    _symlink("cuda-13.0", j("usr/local/cuda"))
    # A library that has nothing to do with NVIDIA.
    _install(built["libfoo"], j("usr/lib/x86_64-linux-gnu/libfoo.so.1.0.0"))
    _symlink("libfoo.so.1.0.0", j("usr/lib/x86_64-linux-gnu/libfoo.so.1"))
    # The system libraries the driver needs (this machine's glibc files).
    for name in SYSLIBS:
        _install(_host_lib(name), j("usr/lib/x86_64-linux-gnu", name))

    # Firmware, vendor files.
    for fw in ("gsp_ga10x.bin", "gsp_tu10x.bin"):
        _write(j("lib/firmware/nvidia", version, fw), f"fake GSP firmware {fw} {version}\n")
    _write(j("usr/share/glvnd/egl_vendor.d/10_nvidia.json"), EGL_VENDOR_JSON)
    _write(j("usr/share/vulkan/icd.d/nvidia_icd.json"), VULKAN_ICD_JSON)
    _write(j("usr/share/vulkan/implicit_layer.d/nvidia_layers.json"), VULKAN_LAYERS_JSON)
    _write(j("etc/OpenCL/vendors/nvidia.icd"), "libnvidia-opencl.so.1\n")
    _write(j("etc/OpenCL/vendors/pocl.icd"), "libpocl.so.2\n")   # not NVIDIA's, as on the host

    # The ld cache, made by this machine's ldconfig (-r chroots into the tree, so the absolute
    # links resolve inside it; -X leaves the links as made above).
    _write(j("etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n\n")
    for name, text in _ld_conf(with_decoy).items():
        _write(j("etc/ld.so.conf.d", name), text)
    proc = _ldconfig(root)
    if proc.returncode != 0 or not os.path.exists(j("etc/ld.so.cache")):
        raise RuntimeError(f"ldconfig -r {root} failed:\n{proc.stderr}")


@functools.lru_cache(maxsize=None)
def _userns_root() -> list:
    """Without root: the prefix that makes a command root of a new user namespace, where
    chroot(2) works (unshare -r), or [] where that is not allowed."""
    if os.geteuid() == 0 or shutil.which("unshare") is None:
        return []
    ok = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    return ["unshare", "--user", "--map-root-user"] if ok.returncode == 0 else []


def _ldconfig(root: str) -> subprocess.CompletedProcess:
    """ldconfig -X -r ROOT.  ldconfig chroots into ROOT when it may (root, or root of a user
    namespace); otherwise it only prefixes paths and refuses a relative `include` (the
    Fedora-like rootfs has one)."""
    return subprocess.run(_userns_root() + ["ldconfig", "-X", "-r", root], capture_output=True,
                          text=True, env={**os.environ, "PATH": os.environ.get("PATH", "") +
                                          ":/usr/sbin:/sbin"})


@functools.lru_cache(maxsize=None)
def _driver_template(version: str, cuda_version: int, with_decoy: bool) -> str:
    final = os.path.join(cache_dir(), f"driver-{version}-cuda{cuda_version}-decoy{int(with_decoy)}")
    return _publish(lambda tmp: _build_driver_tree(tmp, version, cuda_version, with_decoy), final)


# --------------------------------------------------------------------------------------------
# GPUs, /proc and /dev.

def default_gpus(n: int = 2, minors=None) -> list:
    """The GPU table build_fake_host uses: bus ids in PCI order, minors NOT in PCI order by
    default (pairs swapped: 1,0,3,2,...; an odd last one keeps its index), UUIDs derived from
    the bus id (so stable across calls and with distinct first 8 hex digits)."""
    if not 0 <= n <= MAX_GPUS:
        raise ValueError(f"gpus must be 0..{MAX_GPUS}, not {n}")
    buses = list(_BUS_IDS[:n]) + [f"0000:{0x80 + i:02x}:00.0" for i in range(len(_BUS_IDS), n)]
    if minors is None:
        minors = [i ^ 1 if (i ^ 1) < n else i for i in range(n)]
    minors = list(minors)
    if len(minors) != n or len(set(minors)) != n or not all(0 <= m < MINOR_MODESET for m in minors):
        raise ValueError(f"minors must be {n} distinct numbers 0..253, not {minors}")
    gpus = []
    for i, (bus, minor) in enumerate(zip(buses, minors)):
        h = hashlib.sha256(f"nvlaunch-fake-gpu:{bus}".encode()).hexdigest()
        uuid = f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
        gpus.append(FakeGpu(index=i, minor=minor, uuid=uuid, bus_id=bus))
    return gpus


def information_text(gpu: FakeGpu, driver_version: str) -> str:
    """proc/driver/nvidia/gpus/<bus>/information, in the driver's exact layout."""
    return (f"Model: \t\t {gpu.model}\n"
            f"IRQ:   \t\t {41 + gpu.index}\n"
            f"GPU UUID: \t {gpu.uuid}\n"
            f"Video BIOS: \t 96.00.a5.00.1a\n"
            f"Bus Type: \t PCIe\n"
            f"DMA Size: \t 52 bits\n"
            f"DMA Mask: \t 0xfffffffffffff\n"
            f"Bus Location: \t {gpu.bus_id}\n"
            f"Device Minor: \t {gpu.minor}\n"
            f"GPU Firmware: \t {driver_version}\n"
            f"GPU Excluded:\t No\n")


def version_text(driver_version: str) -> str:
    """proc/driver/nvidia/version, as on the reference host (trailing spaces included)."""
    return (f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {driver_version}  "
            f"Release Build  (nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n")


PARAMS_TEXT = """ResmanDebugLevel: 4294967295
RmLogonRC: 1
ModifyDeviceFiles: 1
DeviceFileUID: 0
DeviceFileGID: 0
DeviceFileMode: 438
InitializeSystemMemoryAllocations: 1
UsePageAttributeTable: 4294967295
EnableMSI: 1
EnablePCIeGen3: 0
MemoryPoolSize: 0
KMallocHeapMaxSize: 0
VMallocHeapMaxSize: 0
IgnoreMMIOCheck: 0
EnableStreamMemOPs: 0
EnableUserNUMAManagement: 1
NvLinkDisable: 1
RmProfilingAdminOnly: 0
PreserveVideoMemoryAllocations: 0
EnableS0ixPowerManagement: 0
S0ixPowerManagementVideoMemoryThreshold: 256
DynamicPowerManagement: 3
DynamicPowerManagementVideoMemoryThreshold: 200
RegisterPCIDriver: 1
EnablePCIERelaxedOrderingMode: 0
EnableResizableBar: 0
EnableGpuFirmware: 18
EnableGpuFirmwareLogs: 2
RmNvlinkBandwidthLinkCount: 0
EnableDbgBreakpoint: 0
OpenRmEnableUnsupportedGpus: 1
DmaRemapPeerMmio: 1
ImexChannelCount: 2048
CreateImexChannel0: 0
GrdmaPciTopoCheckOverride: 0
CoherentGPUMemoryMode: ""
RegistryDwords: ""
RegistryDwordsPerDevice: ""
RmMsg: ""
GpuBlacklist: ""
"""

POWER_TEXT = """Runtime D3 status:          Not supported
Video Memory:               Active

GPU Hardware Support:
 Video Memory Self Refresh: Not Supported
 Video Memory Off:          Not Supported

S0ix Power Management:
 Platform Support:          Not Supported
 Status:                    Disabled

Notebook Dynamic Boost:     Not Supported
"""

PROC_DEVICES_TEXT = """Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
  7 vcs
 10 misc
 13 input
 29 fb
 89 i2c
128 ptm
136 pts
180 usb
189 usb_device
195 nvidia
195 nvidiactl
226 drm
238 nvidia-uvm
239 nvidia-nvswitch
240 nvidia-nvlink
241 nvidia-caps
242 nvidia-caps-imex-channels
243 hidraw
244 ttyDBC
245 wwan_port
246 bsg
247 watchdog
248 ptp
249 pps
250 rtc
251 dma_heap
252 dax
253 tpm
254 gpiochip

Block devices:
  7 loop
  8 sd
  9 md
253 device-mapper
254 virtblk
259 blkext
"""


def _cap_text(minor: int, mode: int) -> str:
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


@functools.lru_cache(maxsize=None)
def mig_minors_text() -> str:
    """proc/driver/nvidia-caps/mig-minors: every GPU slot the driver reserves, as the driver
    writes it (config 1, monitor 2, gpu0/gi0/access 3, gpu0/gi0/ci0/access 4, ...)."""
    lines = [f"config {MIG_CONFIG_MINOR}", f"monitor {MIG_MONITOR_MINOR}"]
    minor = 3
    for gpu in range(MAX_GPUS):
        for gi in range(15):
            lines.append(f"gpu{gpu}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(8):
                lines.append(f"gpu{gpu}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    lines.append(f"fabric-imex-mgmt {FABRIC_IMEX_MINOR}")
    return "\n".join(lines) + "\n"


def _build_proc(root: str, gpus: list, version: str) -> None:
    d = functools.partial(os.path.join, root, "proc/driver/nvidia")
    _write(d("version"), version_text(version), 0o444)
    _write(d("params"), PARAMS_TEXT, 0o444)
    _write(d("registry"), 'Binary: ""\n', 0o444)
    _write(d("suspend"), "", 0o644)
    _write(d("suspend_depth"), "default\n", 0o644)
    _write(d("patches/README"), "No patches applied.\n", 0o444)
    _write(d("warnings/README"), "No warnings.\n", 0o444)
    for gpu in gpus:
        _write(d("gpus", gpu.bus_id, "information"), information_text(gpu, version), 0o444)
        _write(d("gpus", gpu.bus_id, "power"), POWER_TEXT, 0o444)
        _write(d("gpus", gpu.bus_id, "registry"), 'Binary: ""\n', 0o444)
        os.makedirs(d("capabilities", f"gpu{gpu.minor}", "mig"), exist_ok=True)
    _write(d("capabilities/mig/config"), _cap_text(MIG_CONFIG_MINOR, 0o400), 0o444)
    _write(d("capabilities/mig/monitor"), _cap_text(MIG_MONITOR_MINOR, 0o444), 0o444)
    _write(d("capabilities/fabric-imex-mgmt"), _cap_text(FABRIC_IMEX_MINOR, 0o400), 0o444)
    _write(os.path.join(root, "proc/driver/nvidia-caps/mig-minors"), mig_minors_text(), 0o444)
    _write(os.path.join(root, "proc/devices"), PROC_DEVICES_TEXT, 0o444)


def _video_gid() -> int:
    try:
        return grp.getgrnam("video").gr_gid
    except KeyError:
        return _VIDEO_GID_FALLBACK


STAND_IN_NODE = "/dev/null"


def _mknod(path: str, major: int, minor: int, mode: int, gid: int, stand_in: bool = False) -> bool:
    """A character device node (True); when mknod is not permitted (False), an empty regular
    file, or with `stand_in` a symlink to STAND_IN_NODE."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        real = True
    except PermissionError:
        if stand_in:
            os.symlink(STAND_IN_NODE, path)
            return False                 # (a mode or owner would be /dev/null's)
        open(path, "w").close()
        real = False
    if real or os.geteuid() == 0:
        os.chown(path, 0, gid)
    os.chmod(path, mode)                 # after mknod: its mode is subject to the umask
    return real


def _build_dev(root: str, gpus: list, video_group_nodes: bool, stand_in: bool = False) -> bool:
    """The device nodes; returns whether they are real nodes."""
    d = functools.partial(os.path.join, root, "dev")
    mode, gid = (0o660, _video_gid()) if video_group_nodes else (0o666, 0)
    nodes = [("nvidiactl", MAJOR_NVIDIA, MINOR_CTL), ("nvidia-modeset", MAJOR_NVIDIA, MINOR_MODESET),
             ("nvidia-uvm", MAJOR_UVM, 0), ("nvidia-uvm-tools", MAJOR_UVM, 1),
             ("nvidia-caps-imex-channels/channel0", MAJOR_IMEX, 0)]
    nodes += [(f"nvidia{g.minor}", MAJOR_NVIDIA, g.minor) for g in gpus]
    for g in gpus:                       # DRM cards are numbered in PCI (probe) order
        nodes += [(f"dri/card{g.index}", MAJOR_DRM, g.index),
                  (f"dri/renderD{128 + g.index}", MAJOR_DRM, 128 + g.index)]
    real = all([_mknod(d(name), major, minor, mode, gid, stand_in) for name, major, minor in nodes])
    # MIG capability nodes: root-only config, world-readable monitor, as on the reference host.
    real &= _mknod(d("nvidia-caps/nvidia-cap1"), MAJOR_CAPS, MIG_CONFIG_MINOR, 0o400, 0, stand_in)
    real &= _mknod(d("nvidia-caps/nvidia-cap2"), MAJOR_CAPS, MIG_MONITOR_MINOR, 0o444, 0, stand_in)
    for g in gpus:
        _symlink(f"../card{g.index}", d("dri/by-path", f"pci-{g.bus_id}-card"))
        _symlink(f"../renderD{128 + g.index}", d("dri/by-path", f"pci-{g.bus_id}-render"))
    return real


def build_fake_host(dest: str, gpus: int = 2, driver_version: str = DEFAULT_DRIVER_VERSION,
                    minors=None, cuda_version: int = DEFAULT_CUDA_VERSION, with_decoy: bool = True,
                    video_group_nodes: bool = False, stand_ins: bool = False) -> FakeHost:
    """Build the fake host under `dest` (created if missing; may be an existing empty dir).

    gpus: how many GPUs (0..32); minors: their device minors in PCI order (default 1,0,3,2...);
    cuda_version: what cuDriverGetVersion reports; with_decoy: the CUDA compat libcuda
    (580.95.05, cuInit -> 803) and its ld.so.conf.d entry, sorted before the driver's;
    video_group_nodes: NVIDIA/DRI nodes 0660 group video instead of 0666 root;
    stand_ins: where mknod is not permitted (not root), nodes are symlinks to /dev/null
    rather than empty files (see the module docstring); real_nodes says which it got.
    """
    table = default_gpus(gpus, minors)
    root = os.path.abspath(dest)
    os.makedirs(root, exist_ok=True)
    template = _driver_template(_check_version(driver_version), int(cuda_version), bool(with_decoy))
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    _build_proc(root, table, driver_version)
    real = _build_dev(root, table, video_group_nodes, stand_ins)
    return FakeHost(root=root, driver_root=root, dev_root=root, proc_root=root,
                    driver_version=driver_version, gpus=table, cuda_version=int(cuda_version),
                    real_nodes=real, stand_in_nodes=stand_ins and not real)


# --------------------------------------------------------------------------------------------
# Container rootfs.

BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "id", "true", "false", "sleep", "kill", "ps",
                   "mount", "hostname", "readlink", "stat", "test", "[", "grep", "wc", "head",
                   "cut", "sort", "printf", "mkdir", "rm", "ln", "touch", "uname", "tr", "sed",
                   "find", "dirname", "basename")
# The glibc runtime a dynamic program needs; the first two are required.
GLIBC_FILES = ("ld-linux-x86-64.so.2", "libc.so.6", "libdl.so.2", "libpthread.so.0", "libm.so.6",
               "libgcc_s.so.1", "librt.so.1")
_HOST_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                  "/lib", "/usr/lib")
LAYOUTS = ("debian", "lib64")

PASSWD_TEXT = ("root:x:0:0:root:/root:/bin/sh\n"
               "user:x:1000:1000:user:/home/user:/bin/sh\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP_TEXT = ("root:x:0:\nvideo:x:44:user\nrender:x:105:user\nuser:x:1000:\n"
              "nogroup:x:65534:\n")


def _host_lib(name: str) -> str | None:
    for d in _HOST_LIB_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return None


def _build_rootfs_tree(root: str, layout: str, probe: bool) -> None:
    """debian: bin/, lib/x86_64-linux-gnu/, lib64/ld-linux... -> /lib/x86_64-linux-gnu/...;
    lib64 (Fedora-like): usr/bin, usr/lib64 with bin, lib, lib64, sbin -> usr/*."""
    j = functools.partial(os.path.join, root)
    for sub in ("dev", "proc", "sys", "etc", "usr/bin", "usr/sbin", "usr/lib", "root", "home/user"):
        os.makedirs(j(sub), exist_ok=True)
    os.makedirs(j("tmp"))
    os.chmod(j("tmp"), 0o1777)
    if layout == "debian":
        bindir, libdir = "bin", "lib/x86_64-linux-gnu"
        os.makedirs(j("usr/lib/x86_64-linux-gnu"))
        _symlink(f"/{libdir}/ld-linux-x86-64.so.2", j("lib64/ld-linux-x86-64.so.2"))
        _write(j("etc/debian_version"), "12.7\n")
        _write(j("etc/os-release"), 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
                                    'VERSION_ID="12"\n')
        _write(j("etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n\n")
        _write(j("etc/ld.so.conf.d/libc.conf"), "# libc default configuration\n/usr/local/lib\n")
        _write(j("etc/ld.so.conf.d/x86_64-linux-gnu.conf"),
               "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n"
               "/usr/lib/x86_64-linux-gnu\n")
    else:
        bindir, libdir = "usr/bin", "usr/lib64"
        for name in ("bin", "sbin", "lib", "lib64"):
            _symlink(f"usr/{name}", j(name))
        os.makedirs(j("usr/lib64"))
        _write(j("etc/fedora-release"), "Fedora release 41 (Forty One)\n")
        _write(j("etc/os-release"), 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n')
        _write(j("etc/ld.so.conf"), "include ld.so.conf.d/*.conf\n")
        # Fedora's ld.so searches /usr/lib64 by default; the Debian-built glibc copied in here
        # does not, so the cache must name it.
        _write(j("etc/ld.so.conf.d/lib64.conf"), "/usr/lib64\n")
    _write(j("etc/passwd"), PASSWD_TEXT)
    _write(j("etc/group"), GROUP_TEXT)
    _write(j("etc/hostname"), "probe\n")

    if not os.path.exists(BUSYBOX):
        raise FileNotFoundError(f"{BUSYBOX} missing: apt-get install busybox-static")
    _install(BUSYBOX, j(bindir, "busybox"))
    for applet in BUSYBOX_APPLETS:
        _symlink("busybox", j(bindir, applet))
    for i, name in enumerate(GLIBC_FILES):
        src = _host_lib(name)
        if src is None:
            if i < 2:
                raise FileNotFoundError(f"host glibc file {name} not found")
            continue
        _install(src, j(libdir, name))
    if probe:
        _install(probe_binary(), j("usr/bin/probe"))
    proc = _ldconfig(root)
    if proc.returncode != 0:
        raise RuntimeError(f"ldconfig -r {root} failed:\n{proc.stderr}")


@functools.lru_cache(maxsize=None)
def _rootfs_template(layout: str, probe: bool) -> str:
    # The host's busybox and libc are part of the key: an upgrade makes a new template.
    key = hashlib.sha256(repr([(p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                               for p in (BUSYBOX, _host_lib("libc.so.6")) if p and
                               os.path.exists(p)]).encode()).hexdigest()[:8]
    final = os.path.join(cache_dir(), f"rootfs-{layout}-probe{int(probe)}-{key}")
    return _publish(lambda tmp: _build_rootfs_tree(tmp, layout, probe), final)


def build_rootfs(dest: str, layout: str = "debian", probe: bool = True) -> str:
    """A small container rootfs at `dest` (created; may exist empty): busybox-static with applet
    links (bin/sh -> busybox), the host glibc runtime, etc/passwd (root, user 1000), etc/group
    (video 44), an etc/ld.so.cache, empty dev proc sys tmp, and /usr/bin/probe.  Returns dest."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    template = _rootfs_template(layout, bool(probe))
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["cp", "-a", template + "/.", dest], check=True)
    return dest


# --------------------------------------------------------------------------------------------
# Reading the probe's output.

_KV = re.compile(r"([A-Za-z_][\w.-]*)=(.*?)(?=\s+[A-Za-z_][\w.-]*=|\s*$)")


def parse_kv(text: str) -> dict:
    """Every key=value of the probe's output (later ones win).  A value runs to the next
    " key=" on its line, so "device0=NVIDIA H200" and dlerror() messages keep their spaces."""
    out = {}
    for line in text.splitlines():
        for m in _KV.finditer(line):
            out[m.group(1)] = m.group(2)
    return out


def parse_devices(text: str) -> dict:
    """`probe devices` output -> {"/dev/nvidia0": {"type": "c", "major": 195, "minor": 0,
    "open": "ENXIO", "mode": 0o666, "uid": 0, "gid": 0}, ...} (device nodes only)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] != "dev":
            continue
        major, minor = parts[3].split(":")
        entry = {"type": parts[2], "major": int(major), "minor": int(minor)}
        for k, v in parse_kv(" ".join(parts[4:])).items():
            entry[k] = int(v, 8) if k == "mode" else int(v) if k in ("uid", "gid") else v
        out[parts[1]] = entry
    return out
