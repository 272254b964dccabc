"""Discovery of the NVIDIA driver's files on the host: `discover(host)`.

It finds, under the driver root, every file any capability could inject -- libraries
(through the ld cache, or a directory scan where there is none), binaries, GSP
firmware, vendor config files and IPC sockets -- and returns them as a Driver of
DriverFile records (host.driver_files holds the table of what to look for).  Reads the
host through a HostView and changes nothing.

Library selection follows libnvidia-container: for each wanted soname prefix, walk the
ld cache entries in file order, resolve each candidate's symlink chain *inside* the
driver root and keep the first whose real file name ends with the running kernel
module's version.  That is what skips the CUDA forward-compat libcuda
(/usr/local/cuda-*/compat/libcuda.so.<other version>), which ldconfig may list first,
and the toolkit's stubs.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core.errors import DiscoveryError
from nvlaunch.host import elf, ldcache
from nvlaunch.host.driver_files import (ARCHES, BIN_DIRS, CAPABILITIES, CONFIG_BASES, CONTAINER_BIN_DIR,
                                        EXTRA_LINKS, FIRMWARE_DEST, FIRMWARE_DIRS, LD_SO_CACHE, LD_SO_CONF,
                                        MPS_PIPE_DIR, SCAN_DIRS, VERSION_FILE, ANY, Driver, DriverFile)
from nvlaunch.host.inroot import Resolver
from nvlaunch.host.view import HostView, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


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
                             hint="set --proc-root for a host tree", errno=err.errno) from err
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
    return bool(tail) and tail.isascii() and all(p.isdigit() for p in tail.split("."))


def _lib_file(kind: str, cap: str, prefix: str, host_path: str, name: str,
              soname: str | None) -> DriverFile:
    links: list[str] = []
    if soname and soname != name:
        links.append(soname)
    for link in EXTRA_LINKS.get(prefix, ()):
        if link != name and link not in links:
            links.append(link)
    return DriverFile(kind, cap, host_path, name, soname, tuple(links))


def _wanted_libs() -> list[tuple[str, str, bool]]:
    """[(capability, prefix, versioned)] in table order."""
    out: list[tuple[str, str, bool]] = []
    for cap, spec in CAPABILITIES.items():
        out += [(cap, p, True) for p in spec.libs]
        out += [(cap, p, False) for p in spec.unversioned_libs]
    return out


def _libs_from_cache(res: Resolver, entries: Iterable[ldcache.CacheEntry], version: str,
                     arch_flag: int, kind: str, seen: set[str]) -> list[DriverFile]:
    wanted = _wanted_libs()
    prefixes = {p for _, p, _ in wanted}
    groups: dict[str, list[ldcache.CacheEntry]] = {}
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


def _ld_conf_dirs(host: HostView, res: Resolver) -> list[str]:
    """Directories named by the driver root's /etc/ld.so.conf and its includes."""
    out: list[str] = []
    todo = [LD_SO_CONF]
    done: set[str] = set()
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
            # A NUL ends ldconfig's C string; no path holds one (glob would raise)
            line = line.split("\0", 1)[0].split("#", 1)[0].strip()
            words = line.split()
            if not words or words[0] == "hwcap":
                continue
            if words[0] == "include":          # ldconfig: "include" and a blank
                for pattern in words[1:]:
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


def _libs_from_scan(host: HostView, res: Resolver, version: str,
                    arch: tuple[int, int | None, int, int | None]) -> list[DriverFile]:
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
    found: dict[tuple[str, str], DriverFile] = {}
    seen: set[str] = set()
    i = 0
    while i < len(queue):
        d = queue[i]
        i += 1
        if d in scanned:
            continue
        scanned.add(d)
        try:
            names = set(res.listdir(d))
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
        for _cap, prefix, _ in wanted:
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


def _bins(res: Resolver) -> list[DriverFile]:
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


def _firmware(res: Resolver, version: str) -> list[DriverFile]:
    out, names, dirs = [], set(), set()
    for base in FIRMWARE_DIRS:
        d = res.resolve(f"{base}/nvidia/{version}")
        if d is None or d in dirs:
            continue
        dirs.add(d)
        try:
            listing = sorted(res.listdir(d))
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


def _configs(res: Resolver) -> list[DriverFile]:
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


def _ipc(res: Resolver, mps_pipe_dir: str) -> list[DriverFile]:
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
    res = Resolver(host.driver_root, host.reads)
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


# ------------------------------------------------------------------ CUDA version


