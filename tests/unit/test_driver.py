"""Driver discovery (nvlaunch.host.driver, nvlaunch.host.elf) against the fake host of tests/fakehost.py.

The fake host is shaped like the reference H200 host: the first ld cache entry for
libcuda.so.1 is the CUDA compat decoy (580.95.05), every driver library has a second
cache entry through absolute links in /usr/lib, and the driver lives in
/usr/local/nvidia.
"""
import os
import shutil
import struct

import pytest

from nvlaunch.host import driver as drv
from nvlaunch.host import cuda as CUDA
from nvlaunch.host import driver_files as DF
from nvlaunch.host import inroot as INROOT
from nvlaunch.host import syslibs as SYSLIBS
from nvlaunch.plan import capabilities as CAPS
from nvlaunch.host import elf
from nvlaunch.host import ldcache
from nvlaunch.core.errors import DiscoveryError, UsageError
from nvlaunch.host.view import HostView
from tests.fakehost import build_fake_host

VERSION = "580.159.04"
LIB64 = "/usr/local/nvidia/lib64"

# The fake host's driver libraries per capability (tests/fakehost.py DRIVER_LIBS).
UTILITY_LIBS = {"libnvidia-ml", "libnvidia-cfg"}
COMPUTE_LIBS = {"libcuda", "libcudadebugger", "libnvidia-opencl", "libnvidia-gpucomp",
                "libnvidia-ptxjitcompiler", "libnvidia-allocator", "libnvidia-pkcs11-openssl3",
                "libnvidia-nvvm"}
VIDEO_LIBS = {"libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"}
GRAPHICS_LIBS = {"libnvidia-eglcore", "libnvidia-glcore", "libnvidia-glsi", "libnvidia-glvkspirv",
                 "libnvidia-tls", "libnvidia-rtcore", "libnvidia-fbc", "libnvoptix",
                 "libGLX_nvidia", "libEGL_nvidia", "libGLESv2_nvidia", "libGLESv1_CM_nvidia"}
FIRMWARE = {"gsp_ga10x.bin", "gsp_tu10x.bin"}


@pytest.fixture
def fake(tmp_path):
    # Device nodes are looked at by build_plan only (S_ISCHR and the device number, which
    # no test here asserts): stand-ins do without root.
    return build_fake_host(str(tmp_path / "host"), stand_ins=True)


@pytest.fixture
def host(fake):
    return HostView(fake.driver_root, fake.dev_root, fake.proc_root)


def stems(files, kind="lib"):
    return {f.name[:f.name.index(".so.")] for f in files if f.kind == kind}


def names(files, kind):
    return {f.name for f in files if f.kind == kind}


def by_name(files, name):
    [f] = [f for f in files if f.name == name]
    return f


# --- version --------------------------------------------------------------------------------

def test_parse_version_open_and_proprietary():
    assert drv.parse_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                             "580.159.04  Release Build  (nixbld@)  \nGCC version: 15\n") \
        == "580.159.04"
    assert drv.parse_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  "
                             "Tue Mar  5 22:23:56 UTC 2024\n") == "550.54.15"
    assert drv.parse_version("NVRM version: NVIDIA UNIX Kernel Module for aarch64  "
                             "535.104.05  Release Build  (dvs-builder@U16-I3-B03-4-3)\n") \
        == "535.104.05"
    assert drv.parse_version("GCC version: gcc 12.2.0\n") is None
    assert drv.parse_version("") is None


def test_missing_version_file(fake, host):
    path = os.path.join(fake.proc_root, "proc/driver/nvidia/version")
    os.unlink(path)
    with pytest.raises(DiscoveryError) as exc:
        drv.discover(host)
    assert str(exc.value).startswith(f"NVIDIA driver not found: {path} does not exist")
    assert "is the nvidia kernel module loaded?" in exc.value.hint
    assert "--proc-root" in exc.value.hint


def test_unparsable_version_file(fake, host):
    fake.rewrite("/proc/driver/nvidia/version", "garbage\n")
    with pytest.raises(DiscoveryError, match="cannot parse the NVIDIA driver version"):
        drv.discover(host)


# --- libraries from the ld cache --------------------------------------------------------------

def test_libcuda_is_the_driver_not_the_compat_decoy(fake, host):
    # The fixture really has the decoy first in the cache.
    entries = ldcache.load(os.path.join(fake.driver_root, "etc/ld.so.cache"))
    assert ldcache.lookup(entries, "libcuda.so.1").value.startswith("/usr/local/cuda-13.0/compat/")

    d = drv.discover(host)
    assert d.version == VERSION and d.source == "ldcache" and d.cuda_version is None
    cuda = by_name(d.files, f"libcuda.so.{VERSION}")
    assert cuda.host_path == os.path.join(fake.driver_root, LIB64.lstrip("/"), f"libcuda.so.{VERSION}")
    assert (cuda.kind, cuda.capability, cuda.soname) == ("lib", "compute", "libcuda.so.1")
    assert cuda.links == ("libcuda.so.1", "libcuda.so")
    assert cuda.container_path is None
    for f in d.files:
        assert "cuda-13.0" not in f.host_path and "580.95.05" not in f.host_path
        assert "stubs" not in f.host_path


def test_every_library_is_the_real_versioned_file(fake, host):
    d = drv.discover(host)
    libs = [f for f in d.files if f.kind == "lib"]
    assert stems(libs) == UTILITY_LIBS | COMPUTE_LIBS | VIDEO_LIBS | GRAPHICS_LIBS
    for f in libs:
        assert f.name.endswith("." + VERSION)
        assert f.host_path == os.path.join(fake.driver_root, LIB64.lstrip("/"), f.name)
        assert os.path.isfile(f.host_path) and not os.path.islink(f.host_path)
        # the ELF SONAME is what the cache keyed it by
        assert elf.read_elf_info(f.host_path).soname == f.soname
        assert f.links == tuple(x for x in (f.soname,) if x != f.name) + \
            DF.EXTRA_LINKS.get(f.name.split(".so.")[0] + ".so", ())


def test_links(host):
    d = drv.discover(host)
    assert by_name(d.files, f"libnvidia-opticalflow.so.{VERSION}").links == \
        ("libnvidia-opticalflow.so.1", "libnvidia-opticalflow.so")
    assert by_name(d.files, f"libGLX_nvidia.so.{VERSION}").links == \
        ("libGLX_nvidia.so.0", "libGLX_indirect.so.0")
    # SONAME = file name: no link at all
    gpucomp = by_name(d.files, f"libnvidia-gpucomp.so.{VERSION}")
    assert (gpucomp.soname, gpucomp.links) == (f"libnvidia-gpucomp.so.{VERSION}", ())


def test_duplicates_are_deduplicated(fake, host):
    # Every library is in the cache twice (/usr/local/nvidia/lib64 and /lib via absolute
    # links in /usr/lib); each must be injected once.
    entries = ldcache.load(os.path.join(fake.driver_root, "etc/ld.so.cache"))
    assert sum(e.key == "libnvidia-ml.so.1" for e in entries) == 2
    d = drv.discover(host)
    paths = [f.host_path for f in d.files]
    assert len(paths) == len(set(paths))
    assert len([f for f in d.files if f.name.startswith("libnvidia-ml.so.")]) == 1


def test_wrong_version_libraries_are_not_taken(fake, host):
    fake.rewrite("/proc/driver/nvidia/version",
                 "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  999.1.2  Release\n")
    d = drv.discover(host)
    assert d.version == "999.1.2"
    assert [f for f in d.files if f.kind in ("lib", "lib32")] == []
    assert [f for f in d.files if f.kind == "firmware"] == []      # firmware is per version


def test_compat32_from_i386_cache_entries(fake, host):
    """32-bit entries (no arch bits) give kind lib32, only with compat32 and their capability."""
    root = fake.driver_root
    lib32 = os.path.join(root, "usr/local/nvidia/lib")
    os.makedirs(lib32, exist_ok=True)
    for stem, n in (("libcuda", "1"), ("libnvidia-ml", "1")):
        shutil.copyfile(os.path.join(root, LIB64.lstrip("/"), f"{stem}.so.{VERSION}"),
                        os.path.join(lib32, f"{stem}.so.{VERSION}"))
        os.symlink(f"{stem}.so.{VERSION}", os.path.join(lib32, f"{stem}.so.{n}"))
    cache = os.path.join(root, "etc/ld.so.cache")
    entries = ldcache.load(cache) + [
        ldcache.CacheEntry("libcuda.so.1", "/usr/local/nvidia/lib/libcuda.so.1",
                           ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_I386),
        ldcache.CacheEntry("libnvidia-ml.so.1", "/usr/local/nvidia/lib/libnvidia-ml.so.1",
                           ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_I386)]
    with open(cache + ".new", "wb") as f:
        f.write(ldcache.build(entries))
    os.replace(cache + ".new", cache)

    d = drv.discover(host, machine="x86_64")
    l32 = [f for f in d.files if f.kind == "lib32"]
    assert {(f.capability, f.name, f.soname) for f in l32} == {
        ("compute", f"libcuda.so.{VERSION}", "libcuda.so.1"),
        ("utility", f"libnvidia-ml.so.{VERSION}", "libnvidia-ml.so.1")}
    assert all(f.host_path.startswith(lib32 + "/") for f in l32)
    # the 64-bit ones are unchanged
    assert by_name([f for f in d.files if f.kind == "lib"], f"libcuda.so.{VERSION}").host_path \
        .startswith(os.path.join(root, LIB64.lstrip("/")))

    assert names(CAPS.files_for(d, {"compute", "compat32"}), "lib32") == {f"libcuda.so.{VERSION}"}
    assert names(CAPS.files_for(d, {"compute"}), "lib32") == set()
    assert names(CAPS.files_for(d, {"utility", "compat32"}), "lib32") == \
        {f"libnvidia-ml.so.{VERSION}"}
    assert len(names(CAPS.files_for(d, {"all"}), "lib32")) == 2
    # video brings the compute libraries, in 32 bits too
    assert names(CAPS.files_for(d, {"video", "compat32"}), "lib32") == {f"libcuda.so.{VERSION}"}


def test_unversioned_egl_platform_library(fake, host):
    """libnvidia-egl-wayland carries its own version: taken without the driver-version rule."""
    root = fake.driver_root
    lib64 = os.path.join(root, LIB64.lstrip("/"))
    shutil.copyfile(os.path.join(lib64, f"libnvidia-glsi.so.{VERSION}"),
                    os.path.join(lib64, "libnvidia-egl-wayland.so.1.1.13"))
    os.symlink("libnvidia-egl-wayland.so.1.1.13", os.path.join(lib64, "libnvidia-egl-wayland.so.1"))
    cache = os.path.join(root, "etc/ld.so.cache")
    entries = ldcache.load(cache) + [ldcache.CacheEntry(
        "libnvidia-egl-wayland.so.1", LIB64 + "/libnvidia-egl-wayland.so.1",
        ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_X8664_LIB64)]
    with open(cache, "wb") as f:
        f.write(ldcache.build(entries))
    f = by_name(drv.discover(host).files, "libnvidia-egl-wayland.so.1.1.13")
    assert (f.kind, f.capability, f.soname, f.links) == \
        ("lib", "graphics", "libnvidia-egl-wayland.so.1", ("libnvidia-egl-wayland.so.1",))


# --- the no-cache fallback ----------------------------------------------------------------------

def test_no_cache_scan_finds_the_same_libraries(fake, host):
    with_cache = drv.discover(host)
    os.unlink(os.path.join(fake.driver_root, "etc/ld.so.cache"))
    scanned = drv.discover(host)
    assert scanned.source == "scan"
    assert scanned.files == with_cache.files           # same records, same order


def test_no_cache_and_no_ld_so_conf(fake, host):
    with_cache = drv.discover(host)
    os.unlink(os.path.join(fake.driver_root, "etc/ld.so.cache"))
    shutil.rmtree(os.path.join(fake.driver_root, "etc/ld.so.conf.d"))
    os.unlink(os.path.join(fake.driver_root, "etc/ld.so.conf"))
    scanned = drv.discover(host)
    assert scanned.source == "scan"
    assert scanned.files == with_cache.files


@pytest.mark.parametrize("content", [b"", b"garbage, not a cache",
                                     b"glibc-ld.so.cache1.1" + struct.pack("<I", 10**6) + b"\0" * 30])
def test_damaged_cache_falls_back_to_scan(fake, host, content):
    with_cache = drv.discover(host)
    with open(os.path.join(fake.driver_root, "etc/ld.so.cache"), "wb") as f:
        f.write(content)
    scanned = drv.discover(host)
    assert scanned.source == "scan"
    assert scanned.files == with_cache.files


def test_scan_follows_links_to_the_driver_dir(fake, host):
    """No cache, no ld.so.conf naming it, driver in an odd place: /usr/lib/libcuda.so.1
    points there, and that directory is scanned."""
    root = fake.driver_root
    os.unlink(os.path.join(root, "etc/ld.so.cache"))
    new = "/opt/nv"
    os.makedirs(os.path.join(root, "opt"))
    os.rename(os.path.join(root, "usr/local/nvidia"), os.path.join(root, "opt/nv"))
    for name in os.listdir(os.path.join(root, "usr/lib")):
        p = os.path.join(root, "usr/lib", name)
        if os.path.islink(p) and os.readlink(p).startswith("/usr/local/nvidia/"):
            target = os.readlink(p).replace("/usr/local/nvidia", new)
            os.unlink(p)
            os.symlink(target, p)
    d = drv.discover(host)
    cuda = by_name(d.files, f"libcuda.so.{VERSION}")
    assert cuda.host_path == os.path.join(root, new.lstrip("/"), "lib64", f"libcuda.so.{VERSION}")
    assert stems(d.files) == UTILITY_LIBS | COMPUTE_LIBS | VIDEO_LIBS | GRAPHICS_LIBS


# --- symlinks stay inside the driver root --------------------------------------------------

def _host_path(root, path):
    """The host path `path` (as seen inside `root`) leads to, through the one resolver."""
    res = INROOT.Resolver(root)
    resolved = res.resolve(path)
    return None if resolved is None else res.host(resolved)


def test_resolve_in_root(tmp_path):
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/real").write_text("x")
    (root / "a/b/up").symlink_to("../../../../../../etc/real")
    (root / "a/b/abs").symlink_to("/etc/real")
    (root / "a/b/dirlink").symlink_to("/a")
    (root / "a/b/loop1").symlink_to("loop2")
    (root / "a/b/loop2").symlink_to("loop1")
    (root / "a/b/passwd").symlink_to("/etc/passwd")
    r = str(root)
    assert _host_path(r, "/a/b/up") == f"{r}/etc/real"
    assert _host_path(r, "/a/b/abs") == f"{r}/etc/real"
    assert _host_path(r, "/a/b/dirlink/b/abs") == f"{r}/etc/real"
    assert _host_path(r, "/../../a/./b/../b/up") == f"{r}/etc/real"
    assert _host_path(r, "/a/b/loop1") is None
    assert _host_path(r, "/a/b/passwd") is None       # the host's, not the root's
    assert _host_path(r, "/a/b/missing") is None
    assert _host_path(r, "/etc/real/x") is None        # through a file
    assert _host_path(r, "/") == r
    assert _host_path("/", "/etc/passwd") == os.path.realpath("/etc/passwd")


def test_links_escaping_the_root_are_rerooted(fake, host, tmp_path):
    root = fake.driver_root
    lib64 = os.path.join(root, LIB64.lstrip("/"))
    # 1. a relative link with too many ".." lands back inside the root (like chroot)
    ml = os.path.join(lib64, "libnvidia-ml.so.1")
    os.unlink(ml)
    os.symlink("../" * 12 + f"usr/local/nvidia/lib64/libnvidia-ml.so.{VERSION}", ml)
    # 2. a link climbing out to a real file outside the root with the right name
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copyfile(os.path.join(lib64, f"libcuda.so.{VERSION}"), evil / f"libcuda.so.{VERSION}")
    cuda1 = os.path.join(lib64, "libcuda.so.1")
    os.unlink(cuda1)
    os.symlink(os.path.relpath(evil / f"libcuda.so.{VERSION}", lib64), cuda1)
    assert os.path.exists(cuda1)                     # the host's own resolution escapes
    # 3. an absolute link to a host file
    enc = os.path.join(lib64, "libnvidia-encode.so.1")
    os.unlink(enc)
    os.symlink("/etc/passwd", enc)

    d = drv.discover(host)
    assert by_name(d.files, f"libnvidia-ml.so.{VERSION}").host_path == \
        os.path.join(lib64, f"libnvidia-ml.so.{VERSION}")
    assert not [f for f in d.files if f.name.startswith(("libcuda.so", "libnvidia-encode.so"))]
    for f in d.files:
        assert f.host_path.startswith(root + "/")
        assert os.path.realpath(f.host_path).startswith(os.path.realpath(root) + "/")


# --- binaries, firmware, configs, ipc ----------------------------------------------------------

def test_binaries(fake, host):
    d = drv.discover(host)
    bins = {f.name: f for f in d.files if f.kind == "bin"}
    assert set(bins) == {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
                         "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}
    smi = bins["nvidia-smi"]
    assert smi.host_path == os.path.join(fake.driver_root, "usr/local/nvidia/bin/nvidia-smi")
    assert (smi.capability, smi.container_path) == ("utility", "/usr/bin/nvidia-smi")
    assert bins["nvidia-cuda-mps-server"].capability == "compute"
    # a non-executable file is not a binary
    os.chmod(bins["nvidia-debugdump"].host_path, 0o644)
    assert "nvidia-debugdump" not in names(drv.discover(host).files, "bin")


def test_firmware_once_each(fake, host):
    d = drv.discover(host)
    fw = [f for f in d.files if f.kind == "firmware"]
    # lib -> usr/lib in the fake host: /lib/firmware and /usr/lib/firmware are one dir
    assert {f.name for f in fw} == FIRMWARE and len(fw) == 2
    for f in fw:
        assert f.capability == DF.ANY
        assert f.container_path == f"/lib/firmware/nvidia/{VERSION}/{f.name}"
        assert os.path.isfile(f.host_path)


def test_configs(fake, host):
    d = drv.discover(host)
    cfg = {f.container_path: f for f in d.files if f.kind == "config"}
    assert set(cfg) == {"/etc/OpenCL/vendors/nvidia.icd",
                        "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
                        "/usr/share/vulkan/icd.d/nvidia_icd.json",
                        "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json"}
    assert cfg["/etc/OpenCL/vendors/nvidia.icd"].capability == "compute"
    assert cfg["/usr/share/vulkan/icd.d/nvidia_icd.json"].capability == "graphics"
    assert cfg["/usr/share/glvnd/egl_vendor.d/10_nvidia.json"].host_path == \
        os.path.join(fake.driver_root, "usr/share/glvnd/egl_vendor.d/10_nvidia.json")


def test_config_from_driver_share_dir_goes_to_usr_share(fake, host):
    root = fake.driver_root
    os.unlink(os.path.join(root, "usr/share/vulkan/icd.d/nvidia_icd.json"))
    src = os.path.join(root, "usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json")
    os.makedirs(os.path.dirname(src))
    with open(src, "w") as f:
        f.write("{}\n")
    cfg = {f.container_path: f for f in drv.discover(host).files if f.kind == "config"}
    assert cfg["/usr/share/vulkan/icd.d/nvidia_icd.json"].host_path == src


def test_ipc(fake, host):
    assert [f for f in drv.discover(host).files if f.kind == "ipc"] == []
    root = fake.driver_root
    os.makedirs(os.path.join(root, "run/nvidia-persistenced"))
    open(os.path.join(root, "run/nvidia-persistenced/socket"), "w").close()
    os.makedirs(os.path.join(root, "tmp/nvidia-mps"))
    ipc = {f.container_path: f for f in drv.discover(host).files if f.kind == "ipc"}
    assert set(ipc) == {"/run/nvidia-persistenced/socket", "/tmp/nvidia-mps"}
    assert ipc["/run/nvidia-persistenced/socket"].capability == "utility"
    assert ipc["/tmp/nvidia-mps"].capability == "compute"
    assert names(CAPS.files_for(drv.discover(host), {"utility"}), "ipc") == {"socket"}


# --- capabilities -----------------------------------------------------------------------------

@pytest.mark.parametrize("caps, libs, bins, configs", [
    ({"utility"}, UTILITY_LIBS, {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"}, set()),
    ({"compute"}, COMPUTE_LIBS, {"nvidia-cuda-mps-control", "nvidia-cuda-mps-server"},
     {"nvidia.icd"}),
    ({"video"}, VIDEO_LIBS | COMPUTE_LIBS, set(), set()),
    ({"graphics"}, GRAPHICS_LIBS, set(), {"10_nvidia.json", "nvidia_icd.json", "nvidia_layers.json"}),
    ({"display"}, GRAPHICS_LIBS, set(), {"10_nvidia.json", "nvidia_icd.json", "nvidia_layers.json"}),
    ({"ngx"}, set(), set(), set()),
    ({"compat32"}, set(), set(), set()),
    ({"compute", "utility"}, COMPUTE_LIBS | UTILITY_LIBS,
     {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
      "nvidia-cuda-mps-server"}, {"nvidia.icd"}),
])
def test_files_for_each_capability(host, caps, libs, bins, configs):
    d = drv.discover(host)
    files = CAPS.files_for(d, caps)
    assert stems(files) == libs
    assert names(files, "bin") == bins
    assert names(files, "config") == configs
    assert names(files, "firmware") == FIRMWARE            # whatever the capabilities
    assert list(files) == [f for f in d.files if f in files]   # discovery order kept


def test_files_for_all(host):
    d = drv.discover(host)
    assert CAPS.files_for(d, {"all"}) == d.files
    assert CAPS.files_for(d, DF.ALL_CAPABILITIES) == d.files
    with pytest.raises(UsageError, match="'bogus'"):
        CAPS.files_for(d, {"bogus"})


def test_parse_capabilities():
    assert CAPS.parse_capabilities(None) == {"compute", "utility"}
    assert CAPS.parse_capabilities("") == {"compute", "utility"}
    assert CAPS.parse_capabilities(" , ") == {"compute", "utility"}
    assert CAPS.parse_capabilities("video") == {"video"}
    assert CAPS.parse_capabilities(" compute , graphics,") == {"compute", "graphics"}
    assert CAPS.parse_capabilities("all") == {"compute", "compat32", "graphics", "utility",
                                             "video", "display", "ngx"}
    assert CAPS.parse_capabilities("utility,all") == DF.ALL_CAPABILITIES
    with pytest.raises(UsageError) as exc:
        CAPS.parse_capabilities("compute,gaming")
    assert "'gaming'" in str(exc.value)
    with pytest.raises(UsageError):
        CAPS.parse_capabilities("Compute")                       # names are lower case


def test_devices_for():
    def paths(caps):
        return tuple(p for p, _ in CAPS.devices_for(caps))
    assert CAPS.devices_for({"utility"}) == (("/dev/nvidiactl", True),)
    assert paths({"compute"}) == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
    assert paths({"display"}) == ("/dev/nvidiactl", "/dev/nvidia-modeset")
    # video uses CUDA: the same uvm nodes the plan binds for it (one table for both)
    assert paths({"video"}) == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
    assert all(not required for _, required in CAPS.devices_for({"compute", "display"})[1:])


def test_capability_table_matches_libnvidia_container():
    """Spot checks of the data table against reference 2.1."""
    caps = DF.CAPABILITIES
    assert set(caps) == {"utility", "compute", "video", "graphics", "display", "ngx", "compat32"}
    assert "libnvidia-tileiras.so" in caps["compute"].libs
    assert "libnvidia-nscq.so" in caps["utility"].libs
    assert caps["video"].implies_libs == ("compute",)
    assert caps["display"].implies == ("graphics",)
    for cap in caps.values():
        for prefix in cap.libs + cap.unversioned_libs:
            assert prefix.startswith("lib") and prefix.endswith(".so")


# --- CUDA version, speed -----------------------------------------------------------------------

def test_cuda_driver_version(fake, host):
    d = drv.discover(host)
    assert CUDA.cuda_driver_version(d) == fake.cuda_version == 13000
    assert CUDA.with_cuda_version(d).cuda_version == 13000
    assert CUDA.cuda_driver_version(DF.Driver(VERSION, ())) is None
    bogus = DF.DriverFile("lib", "compute", "/etc/passwd", f"libcuda.so.{VERSION}")
    assert CUDA.cuda_driver_version(DF.Driver(VERSION, (bogus,))) is None


def test_discover_is_fast_and_pure(host, monkeypatch):
    import subprocess
    import time

    def no_subprocess(*a, **k):
        raise AssertionError("discover() must not run subprocesses")
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    drv.discover(host)
    best = min(_timed(drv.discover, host, time) for _ in range(5))
    assert best < 0.05          # ~1 ms; a generous bound for slow CI machines


def _timed(fn, arg, time):
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t


# --- elf ------------------------------------------------------------------------------------

def test_elf_reader(fake, tmp_path):
    lib = os.path.join(fake.driver_root, LIB64.lstrip("/"), f"libcuda.so.{VERSION}")
    info = elf.read_elf_info(lib)
    assert info == elf.ElfInfo(64, elf.EM_X86_64, "libcuda.so.1",
                               ("libm.so.6", "libpthread.so.0", "libc.so.6"))
    assert elf.read_elf_info(os.path.join(fake.driver_root, "usr/local/nvidia/bin/nvidia-smi")) \
        .soname is None
    assert elf.read_elf_info(str(tmp_path / "missing")) is None
    (tmp_path / "text").write_text("hello")
    assert elf.read_elf_info(str(tmp_path / "text")) is None
    (tmp_path / "empty").write_bytes(b"")
    assert elf.read_elf_info(str(tmp_path / "empty")) is None
    assert elf.read_elf_info(str(tmp_path)) is None             # a directory


def test_elf_reader_survives_damage(fake, tmp_path):
    with open(os.path.join(fake.driver_root, LIB64.lstrip("/"), f"libcuda.so.{VERSION}"), "rb") as f:
        data = f.read(65536)
    cases = [data[:16], data[:40], data[:64], data[:200], data[:1000],
             data[:4] + b"\x09" + data[5:],                          # bad class
             data[:0x20] + b"\xff" * 8 + data[0x28:],                # e_phoff far away
             data[:0x36] + b"\xff\xff" + data[0x38:]]                # e_phentsize huge
    # flip bytes through the headers and the dynamic section
    for off in range(0, min(len(data), 4096), 7):
        cases.append(data[:off] + bytes([data[off] ^ 0xff]) + data[off + 1:])
    for i, blob in enumerate(cases):
        p = tmp_path / f"bad{i}"
        p.write_bytes(blob)
        try:
            info = elf.read_elf_info(str(p))
        except ValueError:
            continue
        assert info is None or isinstance(info, elf.ElfInfo)


def test_elf_reader_section_headers_only(fake, tmp_path):
    """No program headers: the SHT_DYNAMIC section gives the soname."""
    with open(os.path.join(fake.driver_root, LIB64.lstrip("/"), f"libcuda.so.{VERSION}"), "rb") as f:
        data = bytearray(f.read())
    struct.pack_into("<Q", data, 0x20, 0)       # e_phoff = 0
    struct.pack_into("<H", data, 0x38, 0)       # e_phnum = 0
    p = tmp_path / "noph.so"
    p.write_bytes(bytes(data))
    assert elf.read_elf_info(str(p)).soname == "libcuda.so.1"


# --- system libraries --------------------------------------------------------------------

def test_system_libs_follow_needed_through_the_ld_cache(fake, host):
    """libcuda and nvidia-smi need libm.so.6 and libpthread.so.0: found through the fake
    host's ld cache, under the driver root.  libc.so.6 is not in that cache (left out), the
    loader never is, and driver libraries are never taken as system ones."""
    d = drv.discover(host)
    files = CAPS.files_for(d, {"compute", "utility"})
    deps = SYSLIBS.system_libs(host, files, d.files)
    assert [f.name for f in deps] == ["libm.so.6", "libpthread.so.0"]
    for f in deps:
        assert f.kind == "syslib" and f.soname == f.name
        assert f.host_path == os.path.join(fake.driver_root, "usr/lib/x86_64-linux-gnu", f.name)
    assert SYSLIBS.system_libs(host, [f for f in files if f.kind != "lib" and f.kind != "bin"]) == []


def test_plan_settles_system_libs_per_rootfs(fake, host, tmp_path):
    from nvlaunch.plan.build import build_plan
    from nvlaunch.plan.records import IF_ABSENT, REQUIRED, settle_absent
    from nvlaunch.plan.request import Request
    from nvlaunch.host.container import libraries_present
    plan = build_plan(Request("0", "compute,utility"), host)
    conditional = [e for e in plan.entries if getattr(e, "policy", None) == IF_ABSENT]
    assert {os.path.basename(e.dst) for e in conditional} == {"libm.so.6", "libpthread.so.0"}
    root = tmp_path / "root"
    (root / "lib64").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib64/libm.so.6").write_bytes(b"\x7fELF")            # has libm, not libpthread
    (root / "usr/lib/libpthread.so.0").write_bytes(b"")           # a hook's old mount point
    (root / "usr/lib/x86_64-linux-gnu").symlink_to("/../../elsewhere")   # stays inside
    assert libraries_present(str(root), ["libm.so.6", "libpthread.so.0"]) == {"libm.so.6"}
    settled = settle_absent(plan, lambda names: libraries_present(str(root), names))
    dsts = {e.dst: e.policy for e in settled.entries if hasattr(e, "policy")}
    assert "/usr/lib/x86_64-linux-gnu/libm.so.6" not in dsts
    assert dsts["/usr/lib/x86_64-linux-gnu/libpthread.so.0"] == REQUIRED
    assert [p[0] for p in settled.ldcache if p[0].startswith(("libm.", "libpthread."))] == \
        ["libpthread.so.0"]
    assert settle_absent(settled, lambda names: set(names)) == settled   # nothing left to settle
