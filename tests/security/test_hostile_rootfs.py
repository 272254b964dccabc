"""Hostile container rootfs layouts against every front end: the host must stay unchanged.

Each layout is a small change made to a fresh copy (cp -a) of the shared busybox rootfs
template (tests.fakehost.build_rootfs): links to a sentinel host directory at the places
nvlaunch writes, files of the wrong kind where it reads or writes (FIFOs, sockets, device
nodes, a 10 GiB sparse ld.so.cache), link loops and chains, names with overlay option
separators, device nodes and setuid binaries shipped in the image, attacks made by the
container's command, and an image environment that tries to get code into the hook
(CVE-2024-0132, -0133, -0135, -0136, CVE-2025-23266, -23267, -23359: reference
nvidia-stack.md section 6).

Front ends (each layout runs on the ones it concerns):
  run-root, run-user   `nvlaunch run --gpus 0` as root and as the unprivileged nvltest
  prestart, create-runtime, create-container
                       `nvlaunch hook STAGE` under real runc (config.json hooks section),
                       the entry nvlaunch itself writes (oci.hooks.invocation)
  lxc                  `nvlaunch lxc-hook` with LXC's environment, in a private mount
                       namespace (unshare -m); a procfs on the rootfs's /proc when that is a
                       plain directory, as lxc.mount.auto = proc would do
  cdi                  the createContainer hook of `nvlaunch cdi generate`'s spec
                       (`nvlaunch ldcache`), under runc

Every case asserts:
- the host is unchanged: host_state() (mounts, sysctls, cgroups, nvlaunch processes, the
  names in /tmp, /run, /dev/shm, /dev) with the sentinel directory the attack aims at and
  the host's /etc/ld.so.conf.d as full trees, and the host's /etc/ld.so.cache;
- nvlaunch either worked or failed with exactly one `nvlaunch: error:` line and a
  non-zero status (no traceback, no "internal error");
- it did not hang: every command runs under a HANG-second timeout (a guard only: a normal
  case takes well under a second) and is killed with its whole process group if it runs
  past it, which is a failure;
- where the container's own command attacks (a shipped block device, mknod, /proc/kcore,
  sysrq, sysctls, remounting /sys), the attack did not succeed.

Every command runs with RLIMIT_AS = 4 GiB, so that an unbounded read (a FIFO, /dev/zero,
a 10 GiB ld.so.cache) cannot take the test machine's memory; running out of it shows up
as an internal error (MemoryError), which fails the case.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import REPO, installed_script, needs_root
from tests.fakehost import build_rootfs
from tests.security.conftest import diff_state, host_state, world_dir

pytestmark = [pytest.mark.slow, needs_root("runc, mknod, private mount namespaces, switching users")]

RUNC = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")
UNSHARE = shutil.which("unshare", path="/usr/bin:/bin") or "unshare"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
HANG = 30                               # seconds: a hang guard, not a timed assertion
MEM_LIMIT = 4 << 30                     # RLIMIT_AS of everything a case starts
HOST_CONFD = "/etc/ld.so.conf.d"
HOST_LDCACHE = "/etc/ld.so.cache"
LIBDIR = "usr/lib/x86_64-linux-gnu"     # where the hooks and run put driver files (debian)
CDI_LIBDIR = "usr/local/nvidia/lib64"   # where the CDI spec puts them
DRIVER_VERSION = "580.159.04"

RUN = ("run-root", "run-user")
HOOKS = ("prestart", "create-runtime", "create-container")
ALL = RUN + HOOKS + ("lxc", "cdi")
CONTAINER = RUN + ("prestart",)         # where the container's own command attacks
STAGE_KEYS = {"prestart": "prestart", "create-runtime": "createRuntime",
              "create-container": "createContainer"}


# ---- the layouts ------------------------------------------------------------------------

def _j(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _replace(path: str, make) -> None:
    """Remove whatever is at `path` (a tree too) and make the new entry there."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make(path)


def _link(root: str, rel: str, target: str) -> None:
    _replace(_j(root, rel), lambda p: os.symlink(target, p))


def _climb(rel: str, host_path: str) -> str:
    """A relative link target at `rel` that climbs far above the rootfs to host_path."""
    return "../" * (rel.count("/") + 12) + host_path.lstrip("/")


def _fifo(root: str, rel: str) -> None:
    _replace(_j(root, rel), os.mkfifo)


def _node(root: str, rel: str, kind: int, major: int, minor: int, mode: int = 0o644) -> None:
    _replace(_j(root, rel), lambda p: os.mknod(p, kind | mode, os.makedev(major, minor)))


def _socket(root: str, rel: str) -> None:
    def make(p):
        s = socket.socket(socket.AF_UNIX)
        s.bind(p)
        s.close()
    _replace(_j(root, rel), make)


def _host_disk() -> tuple[int, int] | None:
    """The block device that holds the host's / (reading 16 bytes of it is harmless)."""
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    if major == 0:
        return None
    try:
        with open(f"/sys/dev/block/{major}:{minor}/dev") as f:
            f.read()
    except OSError:
        return None
    return major, minor


def lay_libdir_abs(root, s):
    _link(root, LIBDIR, s)
    _link(root, "usr/local/nvidia", s)
    _link(root, "usr/bin", s + "/lib")


def lay_libdir_rel(root, s):
    _link(root, LIBDIR, _climb(LIBDIR, s))
    _link(root, "usr/local/nvidia", _climb("usr/local/nvidia", s))
    _link(root, "lib/firmware", _climb("lib/firmware", s))


def lay_etc_root(root, s):
    etc = _j(root, "etc")
    shutil.move(etc, _j(root, "etc.real"))
    os.symlink("/", etc)


def lay_etc_sentinel(root, s):
    _link(root, "etc", s)


def lay_ldcache_abs(root, s):
    _link(root, "etc/ld.so.cache", s + "/file")


def lay_ldcache_rel(root, s):
    _link(root, "etc/ld.so.cache", _climb("etc/ld.so.cache", s + "/file"))


def lay_driver_file_links(root, s):
    for d in (LIBDIR, CDI_LIBDIR):
        os.makedirs(_j(root, d), exist_ok=True)
        _link(root, f"{d}/libcuda.so.1", s + "/file")
        _link(root, f"{d}/libcuda.so.{DRIVER_VERSION}", s + "/file")
        _link(root, f"{d}/libnvidia-ml.so.{DRIVER_VERSION}",
              _climb(f"{d}/libnvidia-ml.so.{DRIVER_VERSION}", s + "/file"))
        _link(root, f"{d}/libnvidia-ml.so.1", _climb(f"{d}/x", s + "/file"))
    _link(root, "usr/bin/nvidia-smi", s + "/file")
    _link(root, f"lib/firmware/nvidia/{DRIVER_VERSION}", s)


def lay_confd_link(root, s):
    _link(root, "etc/ld.so.conf.d", s)


def lay_proc_link(root, s):
    _link(root, "proc", s)


def lay_proc_driver_link(root, s):
    _link(root, "proc/driver", s)


def lay_proc_fake_self(root, s):
    """/proc a plain directory dressed up as a procfs (its `self` a link), its driver
    view a link to the host: LXC's hook decides on /proc/self whether procfs is there."""
    _link(root, "proc/self", "1")
    os.makedirs(_j(root, "proc/1"), exist_ok=True)
    _link(root, "proc/driver", _climb("proc/driver", s))
    os.makedirs(_j(root, "proc/sys/kernel"), exist_ok=True)


def lay_dev_link(root, s):
    _link(root, "dev", s)


def lay_sys_tmp_run_links(root, s):
    _link(root, "sys", s)
    _link(root, "tmp", s)
    _link(root, "run", _climb("run", s))


def lay_link_loops(root, s):
    _link(root, LIBDIR, "loop-a")
    _link(root, "usr/lib/loop-a", "loop-b")
    _link(root, "usr/lib/loop-b", "/usr/lib/x86_64-linux-gnu")
    _link(root, "etc/ld.so.cache", "ld.so.cache")
    _link(root, "usr/local/nvidia", "nvidia")
    _link(root, "etc/ld.so.conf.d", "/etc/ld.so.conf.d/.")


def lay_link_chain(root, s):
    """A chain of 200 links (the kernel follows at most 40), ending at the sentinel."""
    d = _j(root, "usr/lib")
    for i in range(200):
        os.symlink(f"c{i + 1}", os.path.join(d, f"c{i}"))
    os.symlink(s, os.path.join(d, "c200"))
    _link(root, LIBDIR, "c0")
    _link(root, "usr/local/nvidia", "../lib/c0")


def lay_deep_dirs(root, s):
    deep = "/".join(["d"] * 200)
    os.makedirs(_j(root, "deep/" + deep))
    os.symlink(s, _j(root, "deep/" + deep + "/host"))
    _link(root, LIBDIR, "/deep/" + deep + "/host")
    _link(root, "usr/local/nvidia", "../../deep/" + deep)


def lay_separator_names(root, s):
    """Mount targets whose names carry what mount options and mountinfo split on."""
    weird = "x\ny:z,lowerdir=" + s + ",upperdir=" + s + "\\ 1 2"
    os.makedirs(_j(root, "usr/lib/" + weird))
    _link(root, LIBDIR, weird)
    os.makedirs(_j(root, "usr/local/" + weird + "/lib64"))
    _link(root, "usr/local/nvidia", weird)
    with open(_j(root, "etc/ld.so.conf.d/a\nb,c:d.conf"), "w") as f:
        f.write(s + "\n")


def lay_rootfs_separators(root, s):
    """The rootfs's own name carries overlay option syntax (lowerdir=ROOTFS is built from
    it) and a line break; the directories those options name exist beside it."""
    parent = os.path.dirname(root)
    for d in ("up", "wk", "x"):
        os.mkdir(os.path.join(parent, d))
    new = os.path.join(parent, "r,upperdir=up,workdir=wk:x\ny\\ z")
    os.rename(root, new)
    return new


def lay_rootfs_symlink(root, s):
    link = os.path.join(os.path.dirname(root), "rootfs-link")
    os.symlink(root, link)
    return link


def lay_libdir_file(root, s):
    _replace(_j(root, LIBDIR), lambda p: open(p, "w").close())
    _replace(_j(root, CDI_LIBDIR), lambda p: open(p, "w").close())


def lay_wrong_kinds(root, s):
    """A directory where a file mount point goes, a file where a directory goes."""
    os.makedirs(_j(root, f"{LIBDIR}/libcuda.so.{DRIVER_VERSION}/sub"))
    os.makedirs(_j(root, f"{CDI_LIBDIR}/libcuda.so.1/sub"))
    _replace(_j(root, "lib/firmware"), lambda p: open(p, "w").close())
    _replace(_j(root, "etc/ld.so.conf.d/00-nvlaunch.conf"), os.mkdir)


def lay_ldcache_fifo(root, s):
    _fifo(root, "etc/ld.so.cache")


def lay_ldcache_socket(root, s):
    _socket(root, "etc/ld.so.cache")


def lay_ldcache_devnull(root, s):
    _node(root, "etc/ld.so.cache", stat.S_IFCHR, 1, 3)


def lay_ldcache_devzero(root, s):
    _node(root, "etc/ld.so.cache", stat.S_IFCHR, 1, 5)


def lay_ldcache_sparse(root, s):
    path = _j(root, "etc/ld.so.cache")
    os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(10 << 30)


def lay_ldcache_dir(root, s):
    _replace(_j(root, "etc/ld.so.cache"), os.mkdir)
    open(_j(root, "etc/ld.so.cache/x"), "w").close()


def lay_debian_version_fifo(root, s):
    _fifo(root, "etc/debian_version")
    _fifo(root, "etc/os-release")


def lay_confd_fifo(root, s):
    _fifo(root, "etc/ld.so.conf.d")


def _plausible_pids() -> list[int]:
    """Pids the next processes will get: low ones (a hook in the container's pid
    namespace: runc's createContainer hooks run there as pid 5 or so) and the next few
    hundred of this pid namespace."""
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    return sorted(set(range(1, 100)) | set(range(last + 1, last + 700)))


def lay_tmpname_fifos(root, s):
    """FIFOs at the temporary names nvlaunch's writers use next to their targets (the
    name has the writer's pid in it), and stale links where it replaces links, so that
    the replacing path is taken."""
    for d in (LIBDIR, CDI_LIBDIR):
        os.makedirs(_j(root, d), exist_ok=True)
        _link(root, f"{d}/libcuda.so.1", "stale")
    for pid in _plausible_pids():
        for rel in (f"etc/.ld.so.cache.nvlaunch-{pid}", f"etc/ld.so.conf.d/.00-nvlaunch.conf.{pid}",
                    f"{LIBDIR}/.libcuda.so.1.nvlaunch-{pid}", f"{CDI_LIBDIR}/.libcuda.so.1.nvlaunch-{pid}"):
            os.mkfifo(_j(root, rel))


def lay_block_device(root, s):
    major, minor = _host_disk()
    _node(root, "disk", stat.S_IFBLK, major, minor, 0o666)
    _node(root, "usr/dev-mem", stat.S_IFCHR, 1, 1, 0o666)


def lay_setuid(root, s):
    os.mkdir(_j(root, "usr/suid"))
    dst = _j(root, "usr/suid/busybox")
    shutil.copy2("/bin/busybox", dst)
    os.chown(dst, 0, 0)
    os.chmod(dst, 0o4755)
    os.symlink("busybox", _j(root, "usr/suid/id"))


def lay_plain(root, s):
    pass


def _disk_script() -> str:
    return ("for f in /disk /usr/dev-mem; do if head -c 16 $f >/dev/null 2>&1; "
            "then echo READ=$f; fi; done")


def _mknod_script() -> str:
    major, minor = _host_disk() or (0, 0)
    return (f"for d in /dev /tmp / /dev/shm; do busybox mknod $d/xdisk b {major} {minor} "
            "2>/dev/null && head -c 16 $d/xdisk >/dev/null 2>&1 && echo READ=$d; done")


KCORE_SCRIPT = ("for f in /proc/kcore /proc/kmem /proc/kmsg; do "
                "head -c 1 $f >/dev/null 2>&1 && echo READ=$f; done")
SYSRQ_SCRIPT = "echo h 2>/dev/null >/proc/sysrq-trigger && echo WROTE=/proc/sysrq-trigger"
SYSCTL_SCRIPT = ("echo nvl-escape 2>/dev/null >/proc/sys/kernel/domainname; "
                 "v=$(cat /proc/sys/net/core/somaxconn); "
                 "echo $((v + 1)) 2>/dev/null >/proc/sys/net/core/somaxconn; "
                 "echo 1 2>/dev/null >/proc/sys/kernel/sysrq; "
                 "echo 2 2>/dev/null >/proc/sys/kernel/randomize_va_space; true")
REMOUNT_SCRIPT = ("mount -o remount,rw /sys 2>/dev/null && echo WROTE=remount-sys; "
                  "mount -o remount,bind,rw /sys 2>/dev/null && echo WROTE=remount-bind-sys; "
                  "for c in /sys/fs/cgroup/pids /sys/fs/cgroup/devices /sys/fs/cgroup/unified; do "
                  "mkdir $c/nvl-escape-$$ 2>/dev/null && echo WROTE=$c; done; true")
SETUID_SCRIPT = "echo EUID=$(/usr/suid/id -u)"


def no_reads(out: str) -> None:
    got = re.findall(r"^(?:READ|WROTE)=.*$", out, re.M)
    assert not got, f"the container's attack succeeded: {got}\n{out}"


def euid_dropped(out: str) -> None:
    m = re.search(r"^EUID=(\d+)$", out, re.M)
    assert m and m.group(1) == "1000", f"a setuid-root binary of the image raised the euid:\n{out}"


@dataclass
class Layout:
    name: str
    make: object                             # (rootfs, sentinel) -> new rootfs path or None
    fronts: tuple = ALL
    script: str = "echo started"             # the container's command (runc and run)
    check: object = None                     # container stdout -> asserts (when it ran)
    run_opts: tuple = ()
    image_env: str | None = None             # "entry": nvlaunch's hook entry, "noenv": none
    needs: object = None                     # () -> reason to skip, or None


def _needs_disk():
    return None if _host_disk() else "no block device under / to aim at"


LAYOUTS = [
    Layout("libdir-abs-link", lay_libdir_abs),
    Layout("libdir-rel-climb", lay_libdir_rel),
    Layout("etc-to-root", lay_etc_root),
    Layout("etc-to-sentinel", lay_etc_sentinel),
    Layout("ldcache-link-abs", lay_ldcache_abs),
    Layout("ldcache-link-rel", lay_ldcache_rel),
    Layout("driver-file-links", lay_driver_file_links),
    Layout("confd-link", lay_confd_link),
    Layout("proc-link", lay_proc_link),
    Layout("proc-driver-link", lay_proc_driver_link),
    Layout("proc-fake-self", lay_proc_fake_self),
    # (not under runc: runc 1.1 itself follows a /dev link and makes its /dev links there)
    Layout("dev-link", lay_dev_link, RUN + ("lxc",)),
    Layout("sys-tmp-run-links", lay_sys_tmp_run_links),
    Layout("link-loops", lay_link_loops),
    Layout("link-chain-200", lay_link_chain),
    Layout("deep-200-dirs", lay_deep_dirs),
    Layout("separator-names", lay_separator_names),
    Layout("rootfs-path-separators", lay_rootfs_separators),
    Layout("rootfs-is-symlink", lay_rootfs_symlink),
    Layout("libdir-is-file", lay_libdir_file),
    Layout("wrong-kinds", lay_wrong_kinds),
    Layout("ldcache-fifo", lay_ldcache_fifo),
    Layout("ldcache-socket", lay_ldcache_socket),
    Layout("ldcache-devnull", lay_ldcache_devnull),
    Layout("ldcache-devzero", lay_ldcache_devzero),
    Layout("ldcache-sparse-10g", lay_ldcache_sparse),
    Layout("ldcache-dir", lay_ldcache_dir),
    Layout("debian-version-fifo", lay_debian_version_fifo),
    Layout("confd-fifo", lay_confd_fifo),
    Layout("tmpname-fifos", lay_tmpname_fifos),
    Layout("shipped-device-nodes", lay_block_device, CONTAINER, _disk_script(), no_reads,
           needs=_needs_disk),
    Layout("setuid-binary", lay_setuid, RUN, SETUID_SCRIPT, euid_dropped,
           run_opts=("--uid", "1000", "--gid", "1000")),
    Layout("mknod-in-container", lay_plain, CONTAINER, _mknod_script(), no_reads,
           needs=_needs_disk),
    Layout("proc-kcore", lay_plain, CONTAINER, KCORE_SCRIPT, no_reads),
    Layout("sysrq-trigger", lay_plain, CONTAINER, SYSRQ_SCRIPT, no_reads),
    Layout("sysctl-writes", lay_plain, CONTAINER, SYSCTL_SCRIPT),
    Layout("remount-sys-rw", lay_plain, CONTAINER, REMOUNT_SCRIPT, no_reads),
    Layout("image-env-nvlaunch-entry", lay_plain, HOOKS + ("cdi",), image_env="entry"),
    Layout("image-env-entry-without-env", lay_plain, HOOKS, image_env="noenv"),
]
BY_NAME = {lay.name: lay for lay in LAYOUTS}
_COUNTER = itertools.count()
CASES = [(lay.name, front) for lay in LAYOUTS for front in lay.fronts]


# ---- image code aimed at the hooks --------------------------------------------------------

PAYLOAD_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    int fd = open(TARGET, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
}
"""
PY_PAYLOAD = "open({target!r}, 'w').close()\n"


def plant_image_code(root: str, sentinel: str, moddir: str) -> list[str]:
    """The image's code in the rootfs and the process.env that points at it: a preloaded
    library, Python start-up files, a module that shadows nvlaunch (on PYTHONPATH and in
    the hook's cwd, the rootfs, where `python -m` would look first).  Each writes a file
    into the sentinel host directory when it runs."""
    so = os.path.join(root, "payload.so")
    src = os.path.join(moddir, "payload.c")
    with open(src, "w") as f:
        f.write(PAYLOAD_C)
    target = os.path.join(sentinel, "pwned-ld-preload")
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DTARGET="{target}"', "-o", so, src],
                   check=True, capture_output=True)
    for where in ("pylib", "pylib/nvlaunch", "nvlaunch"):
        os.makedirs(_j(root, where), exist_ok=True)
    py = {"pylib/sitecustomize.py": "sitecustomize", "pylib/usercustomize.py": "usercustomize",
          "pylib/startup.py": "pythonstartup", "pylib/nvlaunch/__init__.py": "pythonpath-module",
          "pylib/nvlaunch/__main__.py": "pythonpath-main", "nvlaunch/__init__.py": "cwd-module",
          "nvlaunch/__main__.py": "cwd-main"}
    for rel, tag in py.items():
        with open(_j(root, rel), "w") as f:
            f.write(PY_PAYLOAD.format(target=os.path.join(sentinel, "pwned-" + tag)))
    return [f"LD_PRELOAD=/proc/self/cwd/payload.so:{so}",
            f"PYTHONPATH=/proc/self/cwd/pylib:{root}/pylib",
            f"PYTHONSTARTUP={root}/pylib/startup.py", "PYTHONINSPECT=1",
            "PYTHONSAFEPATH=", "PYTHONNOUSERSITE=", f"PYTHONUSERBASE={root}/pylib"]


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moddir():
    d = world_dir("nvl-hostile-")
    os.mkdir(os.path.join(d, "xdg"), 0o700)
    yield d
    subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)


@pytest.fixture(scope="module")
def runc_spec(moddir) -> dict:
    if RUNC is None:
        pytest.skip("runc not installed")
    d = os.path.join(moddir, "spec")
    os.mkdir(d)
    subprocess.run([RUNC, "spec", "--bundle", d], check=True, capture_output=True)
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def script(moddir) -> str:
    """nvlaunch's own script as installed (tests.conftest.installed_script)."""
    return installed_script(moddir)


@pytest.fixture(scope="module")
def cdi_hook(fake, moddir) -> dict:
    """The createContainer hook of the CDI spec nvlaunch generates for the fake host."""
    r = subprocess.run([sys.executable, "-m", "nvlaunch", "cdi", "generate"], capture_output=True,
                       text=True, timeout=HANG, cwd="/",
                       env={"PATH": PATH, "PYTHONPATH": REPO, **fake.env()})
    assert r.returncode == 0, r.stderr
    hooks = json.loads(r.stdout)["containerEdits"]["hooks"]
    assert len(hooks) == 1 and hooks[0]["hookName"] == "createContainer", hooks
    entry = {k: v for k, v in hooks[0].items() if k != "hookName"}
    assert entry.get("env"), "the CDI spec's hook must carry an env of its own"
    return entry


def _hook_entry(fake, moddir, stage: str) -> dict:
    """The hook entry nvlaunch writes (the runtime shim, setup): oci.hooks.invocation,
    plus XDG_RUNTIME_DIR so the hook's plan cache stays in the test's directory."""
    from nvlaunch.oci.hooks import hook_entry, invocation
    inv = invocation(gopts={"driver_root": fake.driver_root, "dev_root": fake.dev_root,
                            "proc_root": fake.proc_root}, environ={})
    entry = hook_entry(inv, stage)
    entry["env"] = entry["env"] + [f"XDG_RUNTIME_DIR={moddir}/xdg"]
    return entry


def _noenv_entry(fake, moddir, script: str, stage: str) -> dict:
    """A hand-written hook entry without `env` (as in a hooks.d file or a config.json an
    admin edited): nvlaunch's script with the host roots as options."""
    return {"path": "/usr/bin/env",
            "args": ["env", f"XDG_RUNTIME_DIR={moddir}/xdg", sys.executable, "-S", script,
                     "--driver-root", fake.driver_root, "--dev-root", fake.dev_root,
                     "--proc-root", fake.proc_root, "hook", stage]}


# ---- running a case ---------------------------------------------------------------------------

@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    hung: bool
    runtime: bool = False                     # stderr is runc's, quoting the hook's


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def _spawn(cmd: list, env: dict, cwd: str = "/", runtime: bool = False) -> Outcome:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True, preexec_fn=_limit)
    try:
        out, err = proc.communicate(timeout=HANG)
        hung = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        hung = True
    return Outcome(proc.returncode, out, err, hung, runtime)


def _sh(script: str) -> str:
    return f"exec 2>&1; {script}; exit 0"


def run_front(nvl, fake, rootfs: str, lay: Layout) -> Outcome:
    cmd = nvl.cmd("run", "--gpus", "0", *lay.run_opts, rootfs, "/bin/sh", "-c", _sh(lay.script))
    return _spawn(cmd, nvl.environ(fake.env()))


def runc_front(spec: dict, bundle: str, rootfs: str, cid: str, hooks: dict, env: list,
               script: str, runc_env: dict | None = None) -> Outcome:
    config = json.loads(json.dumps(spec))
    config["root"] = {"path": rootfs, "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/sh", "-c", _sh(script)]
    config["process"]["env"] = config["process"].get("env", []) + env
    config["hooks"] = hooks
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    state = os.path.join(bundle, "state")
    o = _spawn([RUNC, "--root", state, "run", "--bundle", bundle, cid],
               runc_env or {"PATH": PATH}, cwd=bundle, runtime=True)
    subprocess.run([RUNC, "--root", state, "delete", "-f", cid], capture_output=True, timeout=HANG)
    return o


def lxc_front(fake, moddir, rootfs: str, name: str) -> Outcome:
    script = ('r=$1; shift; if [ -d "$r/proc" ] && [ ! -L "$r/proc" ] && [ ! -e "$r/proc/self" ]; '
              'then mount -t proc proc "$r/proc" 2>/dev/null; fi; exec "$@"')
    env = {"PATH": PATH, "PYTHONPATH": REPO, "PYTHONSAFEPATH": "1", "LANG": "C.UTF-8",
           "XDG_RUNTIME_DIR": f"{moddir}/xdg", "LXC_ROOTFS_MOUNT": rootfs, "LXC_NAME": name,
           "LXC_HOOK_TYPE": "mount", "LXC_HOOK_SECTION": "lxc", "LXC_HOOK_VERSION": "1",
           "NVIDIA_VISIBLE_DEVICES": "0", **fake.env()}
    return _spawn([UNSHARE, "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                   rootfs, sys.executable, "-m", "nvlaunch", "lxc-hook"], env)


def _error_lines(text: str) -> list:
    # runc quotes the hook's stderr inside its own message, with "\n" escaped
    return re.findall(r"nvlaunch: error: [^\n\\]*", text)


def check_outcome(o: Outcome, front: str) -> bool:
    """Worked, or failed with one error line; never hung.  Returns whether it worked."""
    assert not o.hung, (f"{front}: still running after {HANG} s (killed): a hang\n"
                        f"stdout: {o.out[-2000:]}\nstderr: {o.err[-2000:]}")
    text = o.out + o.err
    assert "Traceback" not in text, text[-4000:]
    lines = _error_lines(o.err)
    for line in lines:
        assert "internal error" not in line, f"{front}: {line}"
    if o.rc == 0:
        assert not lines, (front, o.err)
        return True
    if o.runtime and "running hook" not in o.err and not lines:
        return False           # runc refused the layout itself, before any hook ran
    assert len(lines) == 1, f"{front}: exit {o.rc}, expected one nvlaunch error line:\n{o.err[-3000:]}"
    if not o.runtime:
        assert o.err.strip().splitlines() == [lines[0]], f"{front}: stray stderr:\n{o.err[-3000:]}"
    return False


def _host_files() -> dict:
    try:
        st = os.lstat(HOST_LDCACHE)
        return {HOST_LDCACHE: (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)}
    except OSError:
        return {HOST_LDCACHE: None}


def _restore(before: dict) -> None:
    """Put back what a successful attack changed, so one hole does not spread to the
    rest of the run (the assertion still fails)."""
    for name, value in before["sysctls"].items():
        if value is not None and _read_sysctl(name) != value:
            try:
                with open("/proc/sys/" + name, "w") as f:
                    f.write(value)
            except OSError:
                pass
    for c in ("pids", "devices", "unified"):
        base = f"/sys/fs/cgroup/{c}"
        for name in os.listdir(base) if os.path.isdir(base) else ():
            if name.startswith("nvl-escape-"):
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass


def _read_sysctl(name: str):
    try:
        with open("/proc/sys/" + name) as f:
            return f.read()
    except OSError:
        return None


def _kill_new_processes(before: dict, mine: tuple) -> None:
    """Processes of nvlaunch this case started and left behind (a hung injector child)."""
    from tests.security.conftest import _nvlaunch_processes
    for pid, _ in _nvlaunch_processes() - before["processes"]:
        if not _process_is_ours(pid, mine):
            continue
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


# This machine runs other test sessions at the same time (runc containers, podman, their
# own temporary directories and nvlaunch processes).  What they do is not this case's:
# a change counts when it is at a place on the host an attack could reach (CRITICAL, the
# sentinel, this case's directories) or carries this case's names (MINE).
CRITICAL = ("/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/root", "/boot", "/proc", "/sys",
            "/dev", "/var/run/nvidia", "/run/nvidia", "/run/nvlaunch")
# What nvlaunch (or a runtime following a link) would leave in /tmp: its cache and
# temporary names, loader files, driver files, /dev entries.
NVLAUNCH_NAMES = re.compile(r"^nvlaunch(-\d+)?$|\.nvlaunch-\d+|nvlaunch\.conf|ld\.so|^lib(cuda|nvidia)"
                            r"|^nvidia|^(fd|stdin|stdout|stderr|ptmx|pts|shm|null|zero|full|u?random"
                            r"|tty|driver|firmware|x86_64-linux-gnu|lib64|etc|usr|proc|dev|sys)$")


def _is_ours(text: str, mine: tuple) -> bool:
    return any(m in text for m in mine)


def _mount_point(entry: str) -> str:
    return entry.split(" ", 1)[0].encode().decode("unicode_escape")


def _diff(before: dict, after: dict, mine: tuple) -> list:
    """diff_state over what this case could have changed (see CRITICAL)."""
    def counts_mount(entry):
        mp = _mount_point(entry)
        return mp == "/" or _is_ours(mp, mine) or any(mp == c or mp.startswith(c + "/")
                                                      for c in CRITICAL)
    b, a = dict(before), dict(after)
    b["mounts"] = [m for m in before["mounts"] if counts_mount(m)]
    a["mounts"] = [m for m in after["mounts"] if counts_mount(m)]
    old = dict(before["cgroups"])
    new = dict(after["cgroups"])
    both = set(old) & set(new)
    b["cgroups"] = sorted((k, v) for k, v in old.items() if k in both or _is_ours(k, mine))
    a["cgroups"] = sorted((k, v) for k, v in new.items() if k in both or _is_ours(k, mine))
    b["processes"] = before["processes"] & after["processes"]      # (ours: a["processes"])
    a["processes"] = frozenset(p for p in after["processes"] - before["processes"]
                               if _process_is_ours(p[0], mine)) | b["processes"]
    b["listed"], a["listed"] = {}, {}
    out = diff_state(b, a)
    for d, names in before["listed"].items():
        gone = set(names or ()) - set(after["listed"][d] or ())
        came = set(after["listed"][d] or ()) - set(names or ())
        if d == "/tmp":      # (other sessions' names come and go there all the time)
            gone = {n for n in gone if _is_ours(n, mine)}
            came = {n for n in came if _is_ours(n, mine) or NVLAUNCH_NAMES.search(n)}
        if gone or came:
            out.append(f"listed[{d}]: gone {sorted(gone)}, new {sorted(came)}")
    return out


def _process_is_ours(pid: str, mine: tuple) -> bool:
    """A process of this case: its command line or environment names one of its paths."""
    for what in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                if _is_ours(f.read().decode("latin-1"), mine):
                    return True
        except OSError:
            pass
    return False


def _state(extra) -> dict:
    st = host_state(extra=extra)
    st["files"] = _host_files()
    return st


# ---- the test ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,front", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_hostile_rootfs(layout, front, request, fake, moddir, hostdir, script):
    lay = BY_NAME[layout]
    if lay.needs and lay.needs():
        pytest.skip(lay.needs())
    if front not in RUN and RUNC is None and front != "lxc":
        pytest.skip("runc not installed")
    sentinel = hostdir
    os.mkdir(os.path.join(sentinel, "lib"))
    with open(os.path.join(sentinel, "file"), "w") as f:
        f.write("host sentinel\n")
    bundle = world_dir("nvl-hostile-case-")
    try:
        rootfs = build_rootfs(os.path.join(bundle, "rootfs"), probe=False)
        os.chmod(rootfs, 0o755)
        env: list = []
        if lay.image_env:
            env = plant_image_code(rootfs, sentinel, moddir)
        if lay.image_env == "noenv":
            # A hand-written entry without `env`: the loader runs the image's LD_PRELOAD
            # before any line of nvlaunch (docs/security.md says such an entry must carry
            # env).  What nvlaunch answers for: no Python start-up vector runs, and the
            # hook, finding the container's environment, refuses to work.
            env = [e for e in env if not e.startswith("LD_PRELOAD=")]
        rootfs = lay.make(rootfs, sentinel) or rootfs
        extra = [sentinel, HOST_CONFD]
        mine = (bundle, sentinel, fake.root, moddir, f"nvlh-{os.getpid()}-")
        nvl = None
        if front in RUN:          # (its fixtures make directories in /tmp: before the snapshot)
            nvl = request.getfixturevalue("nvl_root" if front == "run-root" else "nvl_user")
        before = _state(extra)
        try:
            o = _run_case(lay, front, request, nvl, fake, moddir, script, bundle, rootfs, env)
        finally:
            _kill_new_processes(before, mine)
            after = _state(extra)
            _restore(before)
        changed = _diff(before, after, mine)
        assert not changed, f"{layout} on {front} changed the host:\n" + "\n".join(changed)
        worked = check_outcome(o, front)
        if lay.image_env == "noenv" and front == "create-container":   # runc: the image's env
            assert not worked and "environment" in o.err, (front, o.err[-2000:])
        if worked and lay.check:
            lay.check(o.out)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", bundle], check=False)


def _run_case(lay, front, request, nvl, fake, moddir, script, bundle, rootfs, env) -> Outcome:
    if nvl is not None:
        return run_front(nvl, fake, rootfs, lay)
    if front == "lxc":
        return lxc_front(fake, moddir, rootfs, f"nvlt-{lay.name}")
    spec = request.getfixturevalue("runc_spec")
    cid = f"nvlh-{os.getpid()}-{next(_COUNTER)}"
    runc_env = None
    if front == "cdi":
        hooks = {"createContainer": [request.getfixturevalue("cdi_hook")]}
    elif lay.image_env == "noenv":
        hooks = {STAGE_KEYS[front]: [_noenv_entry(fake, moddir, script, front)]}
        # what a hook without env inherits from the runtime: the admin's settings only
        runc_env = {"PATH": PATH, "LANG": "C.UTF-8"}
    else:
        hooks = {STAGE_KEYS[front]: [_hook_entry(fake, moddir, front)]}
    return runc_front(spec, bundle, rootfs, cid, hooks, ["NVIDIA_VISIBLE_DEVICES=0", *env],
                      lay.script, runc_env)
