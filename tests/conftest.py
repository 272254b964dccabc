"""Shared test fixtures: how to run nvlaunch as root and as an unprivileged user.

Tests run against the real kernel.  The unprivileged user is `nvltest` (made by
scripts/bootstrap.sh, with /etc/subuid ranges) or `nobody` (no subordinate ids, so the
single-id map path).  Because CI may clone the repo where other users cannot read it,
the package and its dependencies are staged once into a world-readable directory and
run from there with Debian's python3.
"""
from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TEST_USER = "nvltest"


def is_root() -> bool:
    """Whether this test process is root (the one predicate behind needs_root)."""
    return os.geteuid() == 0


# How a test says it needs root -- the only spelling in tests/.  CI runs the whole suite as
# root, so every one of these runs there; scripts/unit-as-nobody.sh runs tests/unit as
# nobody, where none of them may be needed (tests that need root live in tests/kernel/).
#   a test, class or module:   @needs_root("mknod")   /   pytestmark = needs_root("podman")
#   a fixture or test body:    require_root("to switch users")
# Both skip with the same reason, "needs root (<why>)".

def needs_root(why: str):
    """A skip marker for what cannot run without root; `why` names what root is for."""
    return pytest.mark.skipif(not is_root(), reason=f"needs root ({why})")


def require_root(why: str) -> None:
    """needs_root for fixtures and test bodies: skip the calling test unless root."""
    if not is_root():
        pytest.skip(f"needs root ({why})")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@functools.lru_cache(maxsize=None)
def userns_available() -> bool:
    """Whether this user may make a user namespace (unshare -r), as on this machine."""
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    return r.returncode == 0


def chroot_cmd(root: str, *argv: str) -> list:
    """`chroot ROOT ARGV...` for subprocess: as root directly, otherwise inside a new user
    namespace in which the caller is root (chroot(2) needs nothing more).  Skips the
    calling test where neither is possible."""
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if chroot is None:
        pytest.skip("no chroot")
    if is_root():
        return [chroot, root, *argv]
    if not userns_available():
        pytest.skip("chroot needs root or an unprivileged user namespace")
    return ["unshare", "--user", "--map-root-user", chroot, root, *argv]


@pytest.fixture(scope="session")
def world_tmp():
    """A temporary directory every user can traverse (pytest's own tmp is mode 0700)."""
    d = tempfile.mkdtemp(prefix="nvlaunch-test-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)


@pytest.fixture
def world_tmp_path(world_tmp, request):
    """Per-test directory under world_tmp."""
    d = tempfile.mkdtemp(prefix=request.node.name[:40].replace("/", "_") + "-", dir=world_tmp)
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def stage_dir():
    """A world-readable copy of nvlaunch and its dependencies, for other users."""
    import pyroute2
    d = tempfile.mkdtemp(prefix="nvlaunch-stage-")
    os.chmod(d, 0o755)
    shutil.copytree(os.path.join(REPO, "nvlaunch"), os.path.join(d, "nvlaunch"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    shutil.copytree(os.path.dirname(pyroute2.__file__), os.path.join(d, "pyroute2"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", d], check=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Nvlaunch:
    """Runs `nvlaunch ARGS` as a given user; returns CompletedProcess (text)."""

    def __init__(self, user: str | None, stage: str | None, env: dict | None = None,
                 group: str | None = None):
        self.user, self.stage, self.env = user, stage, dict(env or {})
        self.group = group or user

    def cmd(self, *args) -> list:
        if self.user is None:
            return [sys.executable, "-m", "nvlaunch", *args]
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.group}", "--init-groups",
                "/usr/bin/python3", "-m", "nvlaunch", *args]

    def environ(self, extra=None) -> dict:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if self.user is not None:
            env["PYTHONPATH"] = self.stage
            env["HOME"] = "/"
        else:
            env["PYTHONPATH"] = REPO
        env.update(self.env)
        env.update(extra or {})
        return env

    def __call__(self, *args, input=None, timeout=60, env=None, **kw):
        return subprocess.run(self.cmd(*args), input=input, capture_output=True, text=True,
                              timeout=timeout, env=self.environ(env), cwd="/", **kw)

    def popen(self, *args, env=None, **kw):
        return subprocess.Popen(self.cmd(*args), env=self.environ(env), cwd="/", **kw)


@pytest.fixture(scope="session")
def runtime_dirs():
    """runtime_dirs(user) -> an XDG_RUNTIME_DIR of the tests' own for that user (None:
    root), mode 0700 and owned by them: nvlaunch's plan cache goes there rather than to
    the machine's /run/nvlaunch or /tmp/nvlaunch-UID.  All removed after the session."""
    parent = tempfile.mkdtemp(prefix="nvlaunch-xdg-")
    os.chmod(parent, 0o755)
    made: dict = {}

    def get(user=None):
        if user not in made:
            d = os.path.join(parent, user or "root")
            os.mkdir(d, 0o700)
            if user:
                pw = pwd.getpwnam(user)
                os.chown(d, pw.pw_uid, pw.pw_gid)
            made[user] = d
        return made[user]
    yield get
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def root_runtime_dir(runtime_dirs):
    """The XDG_RUNTIME_DIR of nvlaunch run as root by the tests."""
    return runtime_dirs(None)


def _user_nvlaunch(stage_dir, runtime_dirs, user=TEST_USER, group=None):
    if not user_exists(user):
        pytest.skip(f"no user {user}; run scripts/bootstrap.sh")
    return Nvlaunch(user, stage_dir, env={"XDG_RUNTIME_DIR": runtime_dirs(user)}, group=group)


@pytest.fixture(params=["root", "user"])
def nvl(request, stage_dir, runtime_dirs):
    """nvlaunch as root, and as the unprivileged test user."""
    require_root("to switch users")
    if request.param == "root":
        return Nvlaunch(None, None, env={"XDG_RUNTIME_DIR": runtime_dirs(None)})
    return _user_nvlaunch(stage_dir, runtime_dirs)


@pytest.fixture
def nvl_root(runtime_dirs):
    require_root("nvlaunch as root")
    return Nvlaunch(None, None, env={"XDG_RUNTIME_DIR": runtime_dirs(None)})


@pytest.fixture
def nvl_user(stage_dir, runtime_dirs):
    require_root("to switch users")
    return _user_nvlaunch(stage_dir, runtime_dirs)


@pytest.fixture
def nvl_nobody(stage_dir, runtime_dirs):
    """An unprivileged user with no subordinate ids: the single-id map path."""
    require_root("to switch users")
    return _user_nvlaunch(stage_dir, runtime_dirs, "nobody", "nogroup")


def mounts_snapshot() -> list:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f)


def tree_snapshot(root: str) -> dict:
    """path -> (mode, size, link target) of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size if not os.path.isdir(p) else 0,
                                             os.readlink(p) if os.path.islink(p) else None,
                                             st.st_mtime_ns if not os.path.isdir(p) else 0)
    return out


# ---- the quick default and the whole suite -----------------------------------------------
# Tests marked `slow` (daemons: dockerd, Slurm, a registry; the security suite's hundreds
# of containers) run in CI (CI set, as CI services do) or with NVLAUNCH_SLOW_TESTS=1;
# a plain `make test` elsewhere skips them, saying how to run them.

def _slow_wanted() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("NVLAUNCH_SLOW_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if _slow_wanted():
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or here with NVLAUNCH_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def installed_script(directory: str) -> str:
    """nvlaunch's own script with this venv's python on its first line, as an installer
    writes it, at DIRECTORY/nvlaunch: it finds nvlaunch through the venv's site-packages
    by itself, so a hook entry can run it with no PYTHONPATH (or no env at all)."""
    with open(os.path.join(REPO, "bin", "nvlaunch")) as f:
        body = f.read().split("\n", 1)[1]
    path = os.path.join(directory, "nvlaunch")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n{body}")
    os.chmod(path, 0o755)
    return path
