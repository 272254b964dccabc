"""Which NVIDIA driver files a container gets: discovery on the host, selection per capability.

`discover(host)` finds, under the driver root, every file any capability could inject --
libraries (through the ld cache, or a directory scan where there is none), binaries,
GSP firmware, vendor config files and IPC sockets -- and returns them as a Driver of
DriverFile records.  `files_for(driver, caps)` picks the ones a container with those
NVIDIA_DRIVER_CAPABILITIES gets.  Pure policy: this module reads the host through a
HostView and never changes anything (it never imports kernel or _ns).

What each capability injects is the data table CAPABILITIES below, after
libnvidia-container's src/nvc_info.c lists (shared/reference/nvidia-stack.md 2.1) plus
the toolkit's graphics files (2.2).  Library selection follows libnvidia-container
(reference 3.1): for each wanted soname prefix, walk the ld cache entries in file order,
resolve each candidate's symlink chain *inside* the driver root and keep the first whose
real file name ends with the running kernel module's version.  That is what skips the
CUDA forward-compat libcuda (/usr/local/cuda-*/compat/libcuda.so.<other version>), which
ldconfig may list first, and the toolkit's stubs.
"""
from __future__ import annotations

import errno
import os
import stat
from nvlaunch.core.records import record

from nvlaunch.host import elf
from nvlaunch.host import ldcache
from nvlaunch.core.errors import DiscoveryError, UsageError
from nvlaunch.host.view import HostView, read_text

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
    devices: device nodes this capability adds to the always-injected control node.
    implies: capabilities whose files come with this one; implies_libs: capabilities
          whose *libraries* come with this one (libnvidia-container's VIDEO = VIDEO_LIBS |
          COMPUTE_LIBS).
    """
    libs: tuple[str, ...] = ()
    unversioned_libs: tuple[str, ...] = ()
    bins: tuple[str, ...] = ()
    ipc: tuple[str, ...] = ()
    configs: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] = ()
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
        devices=("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"),
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
        devices=("/dev/nvidia-modeset",),
        implies=("graphics",),
    ),
    # libnvidia-container's NGX_LIBS.  (Its wine nvngx.dll files are not injected.)
    "ngx": Capability(libs=("libnvidia-ngx.so",)),
    # 32-bit copies of the other selected capabilities' libraries; nothing of its own.
    "compat32": Capability(),
}
ALL_CAPABILITIES = frozenset(CAPABILITIES)

# Device node every GPU container gets, whatever the capabilities.
CONTROL_DEVICES = ("/dev/nvidiactl",)

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

MAXSYMLINKS = 40     # as the kernel's path walk


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


# ------------------------------------------------------------------ capabilities


def parse_capabilities(text: str | None) -> frozenset[str]:
    """NVIDIA_DRIVER_CAPABILITIES / --capabilities -> a set of capability names.

    A comma list (blanks and empty items ignored) of the CAPABILITIES names or "all";
    unset or empty gives the default compute,utility.  An unknown name is a UsageError.
    """
    if text is None:
        return DEFAULT_CAPABILITIES
    names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    if not names:
        return DEFAULT_CAPABILITIES
    out = set()
    for name in names:
        if name == "all":
            out |= ALL_CAPABILITIES
        elif name in CAPABILITIES:
            out.add(name)
        else:
            raise UsageError(f"unknown driver capability {name!r} in {text!r}",
                             hint="want a comma list of " + ", ".join(CAPABILITIES) + ", or all")
    return frozenset(out)


def _expand(capabilities) -> tuple[set, set]:
    """(capabilities whose every file is wanted, capabilities whose libraries are wanted)."""
    caps = set(ALL_CAPABILITIES if "all" in capabilities else capabilities)
    unknown = caps - ALL_CAPABILITIES
    if unknown:
        raise UsageError(f"unknown driver capability {sorted(unknown)[0]!r}",
                         hint="want " + ", ".join(CAPABILITIES) + ", or all")
    full, todo = set(), list(caps)
    while todo:
        cap = todo.pop()
        if cap not in full:
            full.add(cap)
            todo.extend(CAPABILITIES[cap].implies)
    libs = set(full)
    for cap in full:
        libs.update(CAPABILITIES[cap].implies_libs)
    return full, libs


def files_for(driver: Driver, capabilities) -> tuple[DriverFile, ...]:
    """The files a container with these capabilities gets, in discovery order.

    video brings the compute libraries (not the MPS binaries), display all of graphics,
    compat32 the 32-bit copies of the libraries selected otherwise, "all" everything.
    GSP firmware comes with any set: libnvidia-container mounts it whatever the flags.
    """
    full, libs = _expand(capabilities)
    compat32 = "compat32" in full
    out = []
    for f in driver.files:
        if f.capability == ANY:
            out.append(f)
        elif f.kind == "lib":
            if f.capability in libs:
                out.append(f)
        elif f.kind == "lib32":
            if compat32 and f.capability in libs:
                out.append(f)
        elif f.capability in full:
            out.append(f)
    return tuple(out)


def devices_for(capabilities) -> tuple[str, ...]:
    """Device nodes (host paths like /dev/nvidia-uvm) the capabilities add to the control
    node; GPU nodes come from the selection (gpus.py)."""
    full, _ = _expand(capabilities)
    out = list(CONTROL_DEVICES)
    for cap in CAPABILITIES:                 # table order, so the result is stable
        if cap in full:
            out.extend(d for d in CAPABILITIES[cap].devices if d not in out)
    return tuple(out)


# ------------------------------------------------------------------ path resolution


class _Resolver:
    """Resolves host paths inside a root, like chroot would: an absolute link target
    starts again at the root, and ".." never climbs above it (libnvidia-container's
    path_resolve, reference 3.3).  One instance per discover() call; it memoizes every
    resolved component, so the shared directory prefixes cost one readlink each.
    """

    def __init__(self, root: str):
        self.prefix = "" if root == "/" else root.rstrip("/")
        self.memo: dict[str, str | None] = {}

    def host(self, resolved: str) -> str:
        """The host path of a resolved in-root path."""
        if not self.prefix:
            return resolved
        return self.prefix if resolved == "/" else self.prefix + resolved

    def resolve(self, path: str) -> str | None:
        """The in-root path ("/usr/local/nvidia/lib64/libcuda.so.580.159.04") `path`
        leads to, or None if a component is missing or links loop."""
        return self._walk(path, [0])

    def _walk(self, path: str, hops: list) -> str | None:
        cur = ""
        for comp in path.split("/"):
            if comp == "" or comp == ".":
                continue
            if comp == "..":
                # cur has no symlinks left, so a lexical ".." is the real parent; at the
                # root it stays there.
                cur = cur[:cur.rfind("/")] if cur else ""
                continue
            nxt = cur + "/" + comp
            if nxt in self.memo:
                cur = self.memo[nxt]
                if cur is None:
                    return None
                continue
            try:
                target = os.readlink(self.prefix + nxt)
            except OSError as err:
                if err.errno == errno.EINVAL:        # exists, not a symlink
                    self.memo[nxt] = cur = nxt
                    continue
                self.memo[nxt] = None               # ENOENT, ENOTDIR, EACCES, ...
                return None
            except ValueError:                      # NUL byte in the path
                return None
            hops[0] += 1
            if hops[0] > MAXSYMLINKS:
                return None
            resolved = self._walk(target if target.startswith("/") else cur + "/" + target,
                                  hops)
            self.memo[nxt] = resolved
            if resolved is None:
                return None
            cur = resolved
        return cur or "/"


def resolve_in_root(root: str, path: str) -> str | None:
    """The host path that `path` (absolute, as seen from inside `root`) resolves to,
    following symlinks inside `root` only; None if it does not exist."""
    res = _Resolver(root)
    resolved = res.resolve(path)
    return None if resolved is None else res.host(resolved)


# ------------------------------------------------------------------ discovery

def _is_version_token(token: str) -> bool:
    """Dotted decimal numbers with at least one dot: "580.159.04"."""
    parts = token.split(".")
    return len(parts) > 1 and all(p.isdigit() and p.isascii() for p in parts)


def parse_version(text: str) -> str | None:
    """The driver version from /proc/driver/nvidia/version text, for both

        NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ...
        NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...

    i.e. the first dotted-number token after "Kernel Module" on the NVRM line.
    """
    for line in text.splitlines():
        if not line.startswith("NVRM version:"):
            continue
        tail = line.partition("Kernel Module")[2] or line[len("NVRM version:"):]
        for token in tail.split():
            if _is_version_token(token):
                return token
    return None


def driver_version(host: HostView) -> str:
    """The running kernel module's version (DiscoveryError if there is none)."""
    path = host.proc(VERSION_FILE)
    try:
        text = read_text(path)
    except OSError as err:
        raise DiscoveryError(f"NVIDIA driver version unreadable: {path}: {err.strerror or err}",
                             hint="set --proc-root for a host tree") from err
    if text is None:
        raise DiscoveryError(f"NVIDIA driver not found: {path} does not exist",
                             hint="is the nvidia kernel module loaded? "
                                  "set --proc-root for a host tree")
    version = parse_version(text)
    if version is None:
        raise DiscoveryError(f"cannot parse the NVIDIA driver version in {path}",
                             hint="no 'NVRM version: ... Kernel Module <version>' line")
    return version


def _is_version_tail(tail: str) -> bool:
    """"1", "580.159.04": what may follow "<prefix>." in an ld cache key."""
    return bool(tail) and all(p.isdigit() for p in tail.split("."))


def _lib_file(kind, cap, prefix, host_path, name, soname) -> DriverFile:
    links = []
    if soname and soname != name:
        links.append(soname)
    for link in EXTRA_LINKS.get(prefix, ()):
        if link != name and link not in links:
            links.append(link)
    return DriverFile(kind, cap, host_path, name, soname, tuple(links))


def _wanted_libs():
    """[(capability, prefix, versioned)] in table order."""
    out = []
    for cap, spec in CAPABILITIES.items():
        out += [(cap, p, True) for p in spec.libs]
        out += [(cap, p, False) for p in spec.unversioned_libs]
    return out


def _libs_from_cache(res: _Resolver, entries, version: str, arch_flag: int, kind: str,
                     seen: set) -> list[DriverFile]:
    wanted = _wanted_libs()
    prefixes = {p for _, p, _ in wanted}
    groups: dict[str, list] = {}
    for e in entries:
        if e.flags & ldcache.ARCH_MASK != arch_flag or not e.flags & ldcache.FLAG_ELF:
            continue
        key = e.key
        i = key.find(".so.")
        if i < 0:
            continue
        base = key[:i + 3]
        if base in prefixes and _is_version_tail(key[i + 4:]):
            groups.setdefault(base, []).append(e)
    suffix = "." + version
    out = []
    for cap, prefix, versioned in wanted:
        for e in groups.get(prefix, ()):
            resolved = res.resolve(e.value)
            if resolved is None:
                continue
            name = resolved[resolved.rfind("/") + 1:]
            if versioned and not name.endswith(suffix):
                continue        # the compat decoy, a stub, another driver's leftover
            if not name.startswith(prefix):
                continue        # a link into some other library
            if resolved not in seen:
                seen.add(resolved)
                out.append(_lib_file(kind, cap, prefix, res.host(resolved), name, e.key))
            break
    return out


def _ld_conf_dirs(host: HostView, res: _Resolver) -> list[str]:
    """Directories named by the driver root's /etc/ld.so.conf and its includes."""
    out: list[str] = []
    todo, done = [LD_SO_CONF], set()
    while todo and len(done) < 256:
        conf = todo.pop(0)
        if conf in done:
            continue
        done.add(conf)
        resolved = res.resolve(conf)
        try:
            text = read_text(res.host(resolved)) if resolved else None
        except OSError:         # unreadable, a directory: ldconfig would skip it too
            text = None
        if not text:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("hwcap"):
                continue
            if line.startswith("include"):
                for pattern in line.split()[1:]:
                    if not pattern.startswith("/"):
                        pattern = os.path.dirname(conf) + "/" + pattern
                    # glob under the root; the names found are in-root paths again
                    import glob     # only on this fallback path
                    base = res.prefix
                    todo += sorted(p[len(base):] for p in glob.glob(base + pattern))
                continue
            for d in line.replace(":", " ").replace(",", " ").split():
                d = d.split("=", 1)[0]           # old "dir=TYPE" syntax
                if d.startswith("/") and d not in out:
                    out.append(d)
    return out


def _libs_from_scan(host: HostView, res: _Resolver, version: str, arch) -> list[DriverFile]:
    """Libraries found by listing directories: files named <prefix>.<version> (or, for
    unversioned ones, the <prefix>.N link), with their SONAME read from the ELF file."""
    _, _, machine64, machine32 = arch
    wanted = _wanted_libs()
    dirs = _ld_conf_dirs(host, res) + [d for d in SCAN_DIRS]
    queue, scanned = [], set()
    for d in dirs:
        r = res.resolve(d)
        if r and r not in queue:
            queue.append(r)
    found: dict[tuple, DriverFile] = {}
    seen: set[str] = set()
    i = 0
    while i < len(queue):
        d = queue[i]
        i += 1
        if d in scanned:
            continue
        scanned.add(d)
        try:
            names = set(os.listdir(res.host(d)))
        except OSError:
            continue
        # A dir holding links to the driver elsewhere (/usr/lib/libcuda.so.1 -> /opt/...)
        # adds that elsewhere: "any dir where libcuda is found".
        for probe in ("libcuda.so.1", "libnvidia-ml.so.1"):
            if probe in names:
                r = res.resolve(d + "/" + probe)
                if r:
                    parent = r[:r.rfind("/")] or "/"
                    if parent not in scanned and parent not in queue:
                        queue.append(parent)
        for cap, prefix, versioned in wanted:
            if versioned:
                candidates = [prefix + "." + version]
            else:
                candidates = sorted(n for n in names if n.startswith(prefix + ".")
                                    and _is_version_tail(n[len(prefix) + 1:]))
            for cand in candidates:
                if cand not in names:
                    continue
                resolved = res.resolve(d + "/" + cand)
                if resolved is None or resolved in seen:
                    continue
                try:
                    info = elf.read_elf_info(res.host(resolved))
                except ValueError:
                    continue
                if info is None:
                    continue
                if info.machine == machine64:
                    kind = "lib"
                elif machine32 is not None and info.machine == machine32:
                    kind = "lib32"
                else:
                    continue
                if (kind, prefix) in found:
                    continue
                seen.add(resolved)
                name = resolved[resolved.rfind("/") + 1:]
                found[(kind, prefix)] = _lib_file(kind, cap, prefix, res.host(resolved), name,
                                                  info.soname)
                break
    # table order, native before 32-bit, like the cache path
    out = []
    for kind in ("lib", "lib32"):
        for cap, prefix, _ in wanted:
            f = found.get((kind, prefix))
            if f is not None:
                out.append(f)
    return out


def _is_exe(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _bins(res: _Resolver) -> list[DriverFile]:
    out = []
    for cap, spec in CAPABILITIES.items():
        for name in spec.bins:
            for d in BIN_DIRS:
                resolved = res.resolve(d + "/" + name)
                if resolved and _is_exe(res.host(resolved)):
                    out.append(DriverFile("bin", cap, res.host(resolved), name,
                                          container_path=f"{CONTAINER_BIN_DIR}/{name}"))
                    break
    return out


def _firmware(res: _Resolver, version: str) -> list[DriverFile]:
    out, names, dirs = [], set(), set()
    for base in FIRMWARE_DIRS:
        d = res.resolve(f"{base}/nvidia/{version}")
        if d is None or d in dirs:
            continue
        dirs.add(d)
        try:
            listing = sorted(os.listdir(res.host(d)))
        except OSError:
            continue
        for name in listing:
            if name.startswith("gsp") and name.endswith(".bin") and name not in names:
                resolved = res.resolve(d + "/" + name)
                if resolved is None:
                    continue
                names.add(name)
                out.append(DriverFile("firmware", ANY, res.host(resolved), name,
                                      container_path=f"{FIRMWARE_DEST}/{version}/{name}"))
    return out


def _configs(res: _Resolver) -> list[DriverFile]:
    out = []
    for cap, spec in CAPABILITIES.items():
        for rel, where in spec.configs:
            for base in CONFIG_BASES[where]:
                resolved = res.resolve(f"{base}/{rel}")
                if resolved is None:
                    continue
                dest = f"/etc/{rel}" if base == "/etc" or where == "etc" else f"/usr/share/{rel}"
                out.append(DriverFile("config", cap, res.host(resolved), rel.rsplit("/", 1)[-1],
                                      container_path=dest))
                break
    return out


def _ipc(res: _Resolver, mps_pipe_dir: str) -> list[DriverFile]:
    out = []
    for cap, spec in CAPABILITIES.items():
        for alternatives in spec.ipc:
            for path in alternatives.split("|"):
                if path == MPS_PIPE_DIR:
                    path = mps_pipe_dir
                resolved = res.resolve(path)
                if resolved is not None:
                    out.append(DriverFile("ipc", cap, res.host(resolved),
                                          path.rstrip("/").rsplit("/", 1)[-1],
                                          container_path=path))
                    break
    return out


def discover(host: HostView, *, machine: str | None = None,
             mps_pipe_dir: str = MPS_PIPE_DIR) -> Driver:
    """Every driver file under the host's driver root, for every capability.

    DiscoveryError if the kernel module's version file is missing.  Libraries come from
    the ld cache; where it is missing, damaged or names no driver library, from scanning
    the library directories.  Files that do not exist are simply absent.

    machine: os.uname().machine by default (it picks the ld cache arch bits);
    mps_pipe_dir: CUDA_MPS_PIPE_DIRECTORY as the caller has it.
    """
    version = driver_version(host)
    arch = ARCHES.get(machine or os.uname().machine, ARCHES["x86_64"])
    res = _Resolver(host.driver_root)
    libs: list[DriverFile] = []
    source = "ldcache"
    entries = None
    cache = res.resolve(LD_SO_CACHE)
    if cache is not None:
        try:
            entries = ldcache.load(res.host(cache))
        except ldcache.LdCacheError:
            entries = None
    if entries:
        seen: set[str] = set()
        libs = _libs_from_cache(res, entries, version, arch[0], "lib", seen)
        if arch[1] is not None:
            libs += _libs_from_cache(res, entries, version, arch[1], "lib32", seen)
    if not libs:
        source = "scan"
        libs = _libs_from_scan(host, res, version, arch)
    files = libs + _bins(res) + _firmware(res, version) + _configs(res) + _ipc(res, mps_pipe_dir)
    return Driver(version=version, files=tuple(files), source=source)


# ------------------------------------------------------------------ system libraries

# The dynamic loader is named by the program interpreter, never through a library
# directory: a copy in the container's library directory would do nothing.
_LOADER_PREFIXES = ("ld-linux", "ld64.so", "ld-musl")
MAX_SYSTEM_LIBS = 64


def system_libs(host: HostView, files, driver_files=(), machine: str | None = None
                ) -> list[DriverFile]:
    """The host libraries outside the driver that its native libraries and binaries in
    `files` need (DT_NEEDED, followed transitively): libm.so.6, libpthread.so.0, ... for
    libcuda and nvidia-smi.  Each is found through the driver root's ld cache (first
    native entry, resolved inside the root) and comes back as kind "syslib" named by its
    soname.  Names any driver library provides (`files` and `driver_files`: those belong
    to a capability, not here), the dynamic loader and names the cache does not know are
    left out.  A container normally has these; the plan binds them only where it does
    not (plan.IF_ABSENT).  Runs only when a plan is built (plans are cached)."""
    arch = ARCHES.get(machine or os.uname().machine, ARCHES["x86_64"])
    libs = [f for f in (*files, *driver_files) if f.kind in ("lib", "lib32")]
    provided = {f.soname for f in libs if f.soname} | {f.name for f in libs}
    wanted: list[str] = []
    for f in files:
        if f.kind in ("lib", "bin"):
            wanted.extend(_needed(f.host_path))
    if not wanted:
        return []
    res = _Resolver(host.driver_root)
    cache = res.resolve(LD_SO_CACHE)
    try:
        entries = ldcache.load(res.host(cache)) if cache else []
    except ldcache.LdCacheError:
        entries = []
    where: dict[str, str] = {}
    for e in entries:
        if e.flags & ldcache.ARCH_MASK == arch[0] and e.flags & ldcache.FLAG_ELF:
            where.setdefault(e.key, e.value)
    out: list[DriverFile] = []
    seen = set(provided)
    while wanted and len(out) < MAX_SYSTEM_LIBS:
        name = wanted.pop(0)
        if name in seen or name.startswith(_LOADER_PREFIXES):
            continue
        seen.add(name)
        resolved = res.resolve(where[name]) if name in where else None
        if resolved is None:
            continue
        host_path = res.host(resolved)
        out.append(DriverFile("syslib", ANY, host_path, name, name, ()))
        wanted.extend(_needed(host_path))
    return out


def _needed(path: str) -> tuple:
    try:
        info = elf.read_elf_info(path)
    except ValueError:
        return ()
    return info.needed if info else ()


# ------------------------------------------------------------------ CUDA version

_cuda_cache: dict[tuple, int | None] = {}


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
    return driver._replace(cuda_version=cuda_driver_version(driver))
