"""Binds from host mounts of every flag set: nothing the source mount carries is lost and
nothing locked is cleared, as root and rootless (nvltest's user namespace, where the kernel
locks ro/nosuid/nodev/noexec and the atime mode of every mount it inherits and refuses,
EPERM, a remount that would clear one).

Each case mounts a tmpfs with the flags under test (rw first, filled, then remounted with
them), binds it into a container, and reads /proc/self/mountinfo inside: the bind's
per-mount options must be the source's, plus `ro` where the bind asks for it.  Two ways
through `_ns.remount_bind`: mount_setattr(2) (this kernel), and the statvfs remount that
kernels before 5.12 get, forced here by a seccomp filter that fails mount_setattr with
ENOSYS for the whole nvlaunch process tree.

  - user binds: `--bind SRC:/x:ro --bind SRC:/y` with `nvlaunch run --no-gpu`;
  - the driver tree: a fake host's driver root copied onto such a mount (ro,nosuid,nodev
    like the squashfs of the reference host, and variants), `nvlaunch run --gpus all`.
"""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys

import pytest

from tests.conftest import needs_root
from tests.fakehost import parse_kv
from tests.kernel.conftest import world_dir

pytestmark = [pytest.mark.slow, needs_root("mount, to switch users")]

MS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x400,
      "nodiratime": 0x800, "relatime": 0x1000, "strictatime": 1 << 24, "nosymfollow": 0x100}
MS_REMOUNT = 0x20
MNT_DETACH = 2

SINGLE = ["ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "strictatime",
          "nosymfollow"]
COMBOS = ["ro,nosuid,nodev", "ro,noexec,noatime", "nosuid,nodev,noexec,relatime",
          "strictatime,nodiratime", "ro,nosuid,nodev,noexec,strictatime,nosymfollow"]
# Driver roots: no noexec (no library could be mapped executable from it, whatever nvlaunch
# does); the driver's binds add ro,nosuid,nodev themselves.
DRIVER_FLAGS = ["ro,nosuid,nodev", "ro,nosuid,nodev,strictatime", "ro,nosuid,nodev,noatime,nodiratime",
                "ro,nosuid,nodev,nosymfollow", "nosuid,nodev,relatime", "strictatime,nodiratime"]
PATHS = ["mount_setattr", "statvfs"]

_libc = ctypes.CDLL(None, use_errno=True)


def _c(s: str | None):
    return None if s is None else s.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def _umount(target: str) -> None:
    if _libc.umount2(_c(target), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def expected_opts(flags: str) -> frozenset:
    """The per-mount options mountinfo shows for a mount made with `flags`: ro or rw, the
    atime mode (relatime unless noatime or strictatime; strictatime shows as nothing)."""
    names = set(flags.split(","))
    out = {"ro" if "ro" in names else "rw"}
    out |= names & {"nosuid", "nodev", "noexec", "noatime", "nodiratime", "nosymfollow"}
    if not names & {"noatime", "strictatime"}:
        out.add("relatime")
    return frozenset(out)


def mountinfo(text: str) -> list:
    """(mount point, major:minor, per-mount options) of each line of a mountinfo text."""
    out = []
    for line in text.splitlines():
        f = line.split(" ")
        if len(f) > 6 and f[2].count(":") == 1:
            out.append((f[4], f[2], frozenset(f[5].split(","))))
    return out


def host_opts(path: str) -> frozenset:
    with open("/proc/self/mountinfo") as f:
        found = [o for mp, _, o in mountinfo(f.read()) if mp == path]
    assert found, f"{path} is no mount point"
    return found[-1]


def dev_of(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


@pytest.fixture
def flagged_mount():
    """flagged_mount(flags, fill) -> a tmpfs (mode 0777) in a world-traversable directory
    under /tmp, filled by fill(dir) while rw, then remounted with `flags`.  Unmounted and
    removed after the test."""
    made = []

    def make(flags: str, fill) -> str:
        d = world_dir("nvl-flags-")
        made.append(d)
        _mount("tmpfs", d, "tmpfs", 0, "mode=0777,size=64m")
        fill(d)
        bits = 0
        for name in flags.split(","):
            bits |= MS[name]
        _mount(None, d, None, MS_REMOUNT | bits, None)
        assert host_opts(d) == expected_opts(flags), "the test's own mount"
        return d

    yield make
    for d in reversed(made):
        try:
            _umount(d)
        except OSError:
            pass
        os.rmdir(d)


# A seccomp filter that fails mount_setattr (442 on every architecture) with ENOSYS, as a
# kernel before 5.12 does, installed before exec'ing argv (inherited by setpriv, nvlaunch
# and every process it starts).  Exits 97 if the filter does not take.
SECCOMP_WRAPPER = r"""
import ctypes, errno, os, struct, sys
arch = int(sys.argv[1], 16)
libc = ctypes.CDLL(None, use_errno=True)
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    ins(0x20, 0, 0, 4),                          # ld arch
    ins(0x15, 0, 3, arch),                       # other arch: allow
    ins(0x20, 0, 0, 0),                          # ld nr
    ins(0x15, 0, 1, 442),                        # mount_setattr:
    ins(0x06, 0, 0, 0x00050000 | errno.ENOSYS),  #   ret ERRNO(ENOSYS)
    ins(0x06, 0, 0, 0x7fff0000),                 # ret ALLOW
])
buf = ctypes.create_string_buffer(prog, len(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
if libc.prctl(22, 2, ctypes.byref(fp), 0, 0) != 0:     # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
libc.syscall.restype = ctypes.c_long
if libc.syscall(ctypes.c_long(442), -1, None, 0, None, 0) != -1 or ctypes.get_errno() != errno.ENOSYS:
    sys.exit(97)
os.execvpe(sys.argv[2], sys.argv[2:], os.environ)
"""
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def run(nvl, path: str, *args, env=None) -> subprocess.CompletedProcess:
    """`nvlaunch ARGS` as nvl's user; with path "statvfs", under the ENOSYS filter."""
    if path == "mount_setattr":
        return nvl(*args, env=env)
    arch = AUDIT_ARCH.get(platform.machine())
    if arch is None:
        pytest.skip(f"no seccomp arch value for {platform.machine()}")
    return subprocess.run([sys.executable, "-c", SECCOMP_WRAPPER, hex(arch), *nvl.cmd(*args)],
                          capture_output=True, text=True, timeout=60, env=nvl.environ(env), cwd="/")


def sections(stdout: str) -> dict:
    """`---name` lines split the output into named sections."""
    out: dict = {"": []}
    cur = ""
    for line in stdout.splitlines():
        if line.startswith("---"):
            cur = line[3:]
            out[cur] = []
        else:
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


USER_SCRIPT = (
    "echo content=$(cat /x/file);"
    "if echo w >/x/w-ro 2>/dev/null; then echo xwrite=ok; else echo xwrite=fail; fi;"
    "if echo w >/y/w-rw 2>/dev/null; then echo ywrite=ok; else echo ywrite=fail; fi;"
    "if cat /y/link >/dev/null 2>&1; then echo link=ok; else echo link=fail; fi;"
    "echo ---mountinfo; cat /proc/self/mountinfo")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flags", SINGLE + COMBOS)
def test_user_bind(nvl, rootfs, flagged_mount, flags, path):
    def fill(d):
        with open(os.path.join(d, "file"), "w") as f:
            f.write("secret-data\n")
        os.chmod(os.path.join(d, "file"), 0o644)
        os.symlink("file", os.path.join(d, "link"))

    src = flagged_mount(flags, fill)
    before = host_opts(src)
    r = run(nvl, path, "run", "--no-gpu", "--bind", f"{src}:/x:ro", "--bind", f"{src}:/y",
            rootfs, "/bin/sh", "-c", USER_SCRIPT)
    assert r.returncode == 0, f"{flags}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    out = sections(r.stdout)
    kv = parse_kv(out[""])
    assert kv["content"] == "secret-data"
    assert kv["xwrite"] == "fail"                                    # :ro, whatever the source
    assert kv["ywrite"] == ("fail" if "ro" in flags.split(",") else "ok")
    assert kv["link"] == ("fail" if "nosymfollow" in flags else "ok")
    inside = {mp: o for mp, _, o in mountinfo(out["mountinfo"])}
    assert inside["/x"] == (before - {"rw"}) | {"ro"}, (flags, sorted(inside["/x"]), sorted(before))
    assert inside["/y"] == before, (flags, sorted(inside["/y"]), sorted(before))
    assert host_opts(src) == before                                  # the host's mount untouched
    assert sorted(os.listdir(src)) == sorted(["file", "link"] + (["w-rw"] if kv["ywrite"] == "ok" else []))


GPU_SCRIPT = ("probe dlopen libcuda.so.1; echo ---smi; nvidia-smi -L;"
              "echo ---mountinfo; cat /proc/self/mountinfo")


@pytest.fixture(scope="module")
def readable_fake(fake):
    subprocess.run(["chmod", "-R", "a+rX", fake.root], check=True)
    return fake


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flags", DRIVER_FLAGS)
def test_driver_tree(nvl, make_rootfs, readable_fake, flagged_mount, flags, path):
    fake = readable_fake

    def fill(d):
        subprocess.run(["cp", "-a", fake.driver_root + "/.", d], check=True)
        shutil.rmtree(os.path.join(d, "dev"))          # nodes and /proc come from the fake itself
        shutil.rmtree(os.path.join(d, "proc"))

    driver = flagged_mount(flags, fill)
    before = host_opts(driver)
    rootfs = make_rootfs(probe=True)
    env = {**fake.env(), "NVLAUNCH_DRIVER_ROOT": driver}
    r = run(nvl, path, "run", "--gpus", "all", rootfs, "/bin/sh", "-c", GPU_SCRIPT, env=env)
    assert r.returncode == 0, f"{flags}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    out = sections(r.stdout)
    kv = parse_kv(out[""])
    assert kv.get("dlopen") == "ok", r.stdout
    assert kv["version"] == fake.driver_version
    assert kv["count"] == str(len(fake.gpus))
    assert [g.uuid for g in fake.gpus] == [line.split("UUID: ")[1].rstrip(")")
                                           for line in out["smi"].splitlines() if "UUID: " in line]
    # every bind from the driver mount keeps what the source carries, adds only ro/nosuid/nodev
    dev = dev_of(driver)
    binds = [(mp, o) for mp, d, o in mountinfo(out["mountinfo"]) if d == dev]
    assert any("libcuda.so." in mp for mp, _ in binds), binds
    keep = before - {"rw"}
    for mp, opts in binds:
        assert keep <= opts and opts - before <= {"ro", "nosuid", "nodev"}, (mp, sorted(opts), sorted(before))
        assert "ro" in opts, mp
    assert host_opts(driver) == before


def test_readonly_bind_covers_the_mounts_under_it(nvl, rootfs, hostdir):
    """`--bind SRC:DST:ro` of a tree with a mount inside: the inner mount is read-only in
    the container too (mount_setattr AT_RECURSIVE), as docker's :ro; rw stays rw."""
    inner = os.path.join(hostdir, "inner")
    os.mkdir(inner)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0777", "tmpfs", inner], check=True)
    try:
        script = ("if echo x > /x/inner/f 2>/dev/null; then echo ro-inner=writable; fi; "
                  "if echo x > /y/inner/g 2>/dev/null; then echo rw-inner=writable; fi")
        proc = nvl("run", "--no-gpu", "--bind", f"{hostdir}:/x:ro", "--bind", f"{hostdir}:/y",
                   rootfs, "/bin/sh", "-c", script)
        assert proc.returncode == 0, proc.stderr
        assert "ro-inner=writable" not in proc.stdout
        assert "rw-inner=writable" in proc.stdout
        assert not os.path.exists(os.path.join(inner, "f"))
    finally:
        subprocess.run(["umount", "-l", inner], check=False)
