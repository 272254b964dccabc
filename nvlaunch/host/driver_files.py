"""What the NVIDIA driver's files are: the table of what each capability injects, and the
records discovery (host.driver) fills.

What each capability injects is the data table CAPABILITIES below, after
libnvidia-container's src/nvc_info.c lists plus the toolkit's graphics files.  Which
capabilities a container asks for, and what they bring, is plan.capabilities.
"""
from __future__ import annotations

from nvlaunch.core.records import record
from nvlaunch.host import elf, ldcache


VERSION_FILE = "/proc/driver/nvidia/version"


LD_SO_CACHE = "/etc/ld.so.cache"


LD_SO_CONF = "/etc/ld.so.conf"


MPS_PIPE_DIR = "/tmp/nvidia-mps"     # CUDA_MPS_PIPE_DIRECTORY's default


CONTAINER_BIN_DIR = "/usr/bin"       # where libnvidia-container puts binaries


FIRMWARE_DEST = "/lib/firmware/nvidia"


DEFAULT_CAPABILITIES = frozenset({"compute", "utility"})


# "lib": a 64-bit (native) library; "lib32": its 32-bit copy (compat32); "bin": an
# executable; "firmware": GSP firmware; "config": vendor/ICD files; "ipc": a socket or
# the MPS pipe directory; "syslib": a host library the driver needs (system_libs()).
KINDS = ("lib", "lib32", "bin", "firmware", "config", "ipc", "syslib")


# The capability label of files every container with driver files gets (GSP firmware).
ANY = "any"


@record
class Capability:
    """What one NVIDIA_DRIVER_CAPABILITIES name injects.

    libs: soname prefixes ("libcuda.so") matched against ld cache keys; only files named
          <prefix>.<driver version> are taken.
    unversioned_libs: prefixes whose files do not carry the driver version (the EGL
          platform libraries are versioned on their own); the first that exists is taken.
    bins: executable names searched in BIN_DIRS under the driver root.
    ipc: host paths of sockets/directories, alternatives separated by "|" (first found).
    configs: (relative path, where) vendor files; where is "data" (searched in
          /etc and the XDG data dirs, mounted under /etc or /usr/share as found) or
          "etc" (only /etc).
    implies: capabilities whose files come with this one; implies_libs: capabilities
          whose *libraries* come with this one (libnvidia-container's VIDEO = VIDEO_LIBS |
          COMPUTE_LIBS).
    """
    libs: tuple[str, ...] = ()
    unversioned_libs: tuple[str, ...] = ()
    bins: tuple[str, ...] = ()
    ipc: tuple[str, ...] = ()
    configs: tuple[tuple[str, str], ...] = ()
    implies: tuple[str, ...] = ()
    implies_libs: tuple[str, ...] = ()


_GRAPHICS_CONFIGS = (
    ("glvnd/egl_vendor.d/10_nvidia.json", "data"),
    ("vulkan/icd.d/nvidia_icd.json", "data"),
    ("vulkan/icd.d/nvidia_icd.x86_64.json", "data"),
    ("vulkan/icd.d/nvidia_layers.json", "data"),
    ("vulkan/implicit_layer.d/nvidia_layers.json", "data"),
    ("egl/egl_external_platform.d/09_nvidia_wayland2.json", "data"),
    ("egl/egl_external_platform.d/10_nvidia_wayland.json", "data"),
    ("egl/egl_external_platform.d/15_nvidia_gbm.json", "data"),
    ("egl/egl_external_platform.d/20_nvidia_xcb.json", "data"),
    ("egl/egl_external_platform.d/20_nvidia_xlib.json", "data"),
    ("nvidia/nvoptix.bin", "data"),
)


CAPABILITIES: dict[str, Capability] = {
    "utility": Capability(
        libs=("libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"),
        bins=("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nv-fabricmanager"),
        ipc=("/run/nvidia-persistenced/socket|/var/run/nvidia-persistenced/socket",
             "/run/nvidia-fabricmanager/socket|/var/run/nvidia-fabricmanager/socket"),
    ),
    "compute": Capability(
        libs=("libcuda.so", "libcudadebugger.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
              "libnvidia-ptxjitcompiler.so", "libnvidia-fatbinaryloader.so",
              "libnvidia-allocator.so", "libnvidia-compiler.so", "libnvidia-pkcs11.so",
              "libnvidia-pkcs11-openssl3.so", "libnvidia-nvvm.so", "libnvidia-tileiras.so"),
        bins=("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"),
        ipc=(MPS_PIPE_DIR,),
        # Differs from NVIDIA: the OpenCL ICD file comes with compute, beside the
        # libnvidia-opencl it names.  libnvidia-container injects no config files at all
        # and the toolkit mounts nvidia.icd only with graphics/display, so an OpenCL
        # program in a compute-only container finds no platform there.
        configs=(("OpenCL/vendors/nvidia.icd", "etc"),),
    ),
    "video": Capability(
        libs=("libvdpau_nvidia.so", "libnvidia-encode.so", "libnvidia-opticalflow.so",
              "libnvcuvid.so"),
        implies_libs=("compute",),
    ),
    "graphics": Capability(
        libs=("libnvidia-eglcore.so", "libnvidia-glcore.so", "libnvidia-tls.so",
              "libnvidia-glsi.so", "libnvidia-fbc.so", "libnvidia-ifr.so",
              "libnvidia-rtcore.so", "libnvoptix.so",
              # the glvnd set (libnvidia-container's default)
              "libGLX_nvidia.so", "libEGL_nvidia.so", "libGLESv2_nvidia.so",
              "libGLESv1_CM_nvidia.so", "libnvidia-glvkspirv.so", "libnvidia-cbl.so",
              # the toolkit's graphics modifier adds this versioned one
              "libnvidia-vulkan-producer.so"),
        # The toolkit's EGL external platform libraries, named in the
        # egl_external_platform.d files above; they carry their own version.
        unversioned_libs=("libnvidia-egl-gbm.so", "libnvidia-egl-wayland.so",
                          "libnvidia-egl-wayland2.so", "libnvidia-egl-xcb.so",
                          "libnvidia-egl-xlib.so"),
        configs=_GRAPHICS_CONFIGS,
    ),
    "display": Capability(
        configs=(("X11/xorg.conf.d/10-nvidia.conf", "data"),
                 ("X11/xorg.conf.d/nvidia-drm-outputclass.conf", "data")),
        implies=("graphics",),
    ),
    # libnvidia-container's NGX_LIBS.  (Its wine nvngx.dll files are not injected.)
    "ngx": Capability(libs=("libnvidia-ngx.so",)),
    # 32-bit copies of the other selected capabilities' libraries; nothing of its own.
    "compat32": Capability(),
}


ALL_CAPABILITIES = frozenset(CAPABILITIES)


# Links made beside a library besides its SONAME, as libnvidia-container does
# (src/nvc_mount.c symlink_libraries): the development names of libcuda and
# libnvidia-opticalflow, and GLVND's indirect GLX name.
EXTRA_LINKS = {
    "libcuda.so": ("libcuda.so",),
    "libnvidia-opticalflow.so": ("libnvidia-opticalflow.so",),
    "libGLX_nvidia.so": ("libGLX_indirect.so.0",),
}


# Where binaries are looked up under the driver root, in order (libnvidia-container walks
# $PATH inside --root; /usr/local/nvidia/bin comes first for driver-container layouts
# such as the reference host).
BIN_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin")


# Directories holding nvidia/<version>/gsp*.bin.  The first four are the kernel's
# firmware search path (drivers/base/firmware_loader); /usr/local/nvidia/firmware is where
# driver-container hosts (the reference host) keep it -- not searched by NVIDIA.
FIRMWARE_DIRS = ("/lib/firmware/updates", "/lib/firmware", "/usr/lib/firmware/updates",
                 "/usr/lib/firmware", "/usr/local/nvidia/firmware")


# Search bases of "data" config files: /etc then $XDG_DATA_DIRS' default, as the
# toolkit searches them, plus the driver-container share dir.  Files found under /etc go
# to /etc in the container, the rest to /usr/share.
CONFIG_BASES = {"data": ("/etc", "/usr/local/share", "/usr/share", "/usr/local/nvidia/share"),
                "etc": ("/etc",)}


# Library directories scanned when the ld cache is missing or names no driver library
# (NixOS-like hosts), after the directories of /etc/ld.so.conf.
SCAN_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
             "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/nvidia/current",
             "/usr/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu/nvidia/current",
             "/lib64", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
             "/usr/lib", "/lib", "/usr/lib32", "/usr/lib/i386-linux-gnu", "/lib32",
             "/run/opengl-driver/lib", "/run/opengl-driver-32/lib")


# Per machine (os.uname): ld cache arch bits of native and 32-bit libraries, and the ELF
# e_machine of each (for the directory scan).  None: no 32-bit libraries there.
ARCHES = {
    "x86_64": (ldcache.FLAG_X8664_LIB64, ldcache.FLAG_I386, elf.EM_X86_64, elf.EM_386),
    "aarch64": (ldcache.FLAG_AARCH64_LIB64, None, elf.EM_AARCH64, None),
}




@record
class DriverFile:
    """One file of the driver a container may get.

    host_path: the real file on this machine (driver root + resolved path).
    name: the name the container gets (for libraries the real versioned file name).
    links: names to create beside a library, pointing at it (SONAME, .so dev links).
    container_path: absolute destination of bin/firmware/config/ipc files; None for
    libraries, which go to the container's library directory (the plan chooses it).
    """
    kind: str
    capability: str
    host_path: str
    name: str
    soname: str | None = None
    links: tuple[str, ...] = ()
    container_path: str | None = None


@record
class Driver:
    """The host driver: its version and every file any capability could inject."""
    version: str
    files: tuple[DriverFile, ...] = ()
    cuda_version: int | None = None
    # Where the libraries came from: "ldcache" or "scan" (no usable ld cache).
    source: str = "ldcache"
