"""Reading and writing a hostile rootfs: the fd walk without openat2, bounded reads that
never block, temporary files that cannot collide and are cleaned up, and an injection
that puts back what it replaced.  On real files (a tmp dir), no root needed."""
from __future__ import annotations

import fcntl
import os
import socket
import threading

import pytest

from nvlaunch.core import files
from nvlaunch.core.errors import ContainerPathError
from nvlaunch.host.inroot import read_in_root, walk_open


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "f").write_text("inside")
    (tmp_path / "host-secret").write_text("host")
    return r


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.mark.parametrize("link", ["/", "../../..", "../../../..", "/etc/../../.."])
def test_walk_open_never_leaves_the_root(root, link):
    os.symlink(link, root / "up")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert _where(walk_open(rootfd, "/up/etc/f")) == str(root / "etc" / "f")
        assert _where(walk_open(rootfd, "/up/../../etc/f")) == str(root / "etc" / "f")
        with pytest.raises(FileNotFoundError):
            walk_open(rootfd, "/up/host-secret")
    finally:
        os.close(rootfd)


def test_walk_open_loops_and_non_directories(root):
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as err:
            walk_open(rootfd, "/a/x")
        assert err.value.errno == 40          # ELOOP
        with pytest.raises(NotADirectoryError):
            walk_open(rootfd, "/etc/f/x")
        os.symlink("/etc/f", root / "l")
        assert _where(walk_open(rootfd, "/l")) == str(root / "etc" / "f")
        fd = walk_open(rootfd, "/l", os.O_PATH | os.O_NOFOLLOW)     # the link itself
        assert _where(fd) == str(root / "l")
    finally:
        os.close(rootfd)


def test_read_in_root_follows_links_inside_only(root, tmp_path):
    os.symlink("/etc/f", root / "rel")
    os.symlink(str(tmp_path / "host-secret"), root / "abs")
    assert read_in_root(str(root), "/rel") == b"inside"
    assert read_in_root(str(root), "/abs") is None          # /tmp/.../host-secret inside: none


@pytest.mark.parametrize("kind", ["fifo", "socket", "dir", "chardev"])
def test_read_in_root_refuses_special_files_at_once(root, kind):
    path = root / "etc" / "ld.so.cache"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
    elif kind == "dir":
        path.mkdir()
    else:
        os.symlink("/dev/zero", path)     # a link to a device: resolved in root, missing
        assert read_in_root(str(root), "/etc/ld.so.cache") is None
        return
    result: list = []
    t = threading.Thread(target=lambda: result.append(_try(root)), daemon=True)
    t.start()
    t.join(30)                            # a hang guard, not a timing
    assert result, "read_in_root blocked"
    assert isinstance(result[0], ContainerPathError)
    assert "not a regular file" in str(result[0])


def _try(root):
    try:
        return read_in_root(str(root), "/etc/ld.so.cache")
    except ContainerPathError as err:
        return err


def test_read_in_root_caps_the_size(root):
    with open(root / "big", "wb") as f:
        f.truncate(64 << 20)              # sparse: no disk
    with pytest.raises(ContainerPathError, match="more than the 16 MiB"):
        read_in_root(str(root), "/big")
    assert read_in_root(str(root), "/big", limit=128 << 20) is not None


def test_temp_names_are_random():
    names = {files.temp_name("ld.so.cache") for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith(".ld.so.cache" + files.TEMP_MARK) for n in names)


def test_replace_in_dir_cleans_up_a_killed_writer_but_not_a_live_one(tmp_path):
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        old = os.path.getmtime(tmp_path) - files.STALE_S - 5
        stale = tmp_path / files.temp_name("x")
        stale.write_bytes(b"half")                        # its writer was killed: no lock
        os.utime(stale, (old, old))
        young = tmp_path / files.temp_name("x")
        young.write_bytes(b"just made")                   # made, not yet locked: spared
        live = tmp_path / files.temp_name("x")
        live.write_bytes(b"being written")
        os.utime(live, (old, old))
        held = os.open(live, os.O_RDONLY)
        fcntl.flock(held, fcntl.LOCK_EX)
        fifo = tmp_path / files.temp_name("x")
        os.mkfifo(fifo)                                   # planted: removed, never opened
        files.replace_in_dir(dirfd, "x", b"new", 0o644)
        assert (tmp_path / "x").read_bytes() == b"new"
        assert not stale.exists() and not fifo.exists()
        assert live.exists() and young.exists()
        os.close(held)
        os.utime(young, (old, old))
        files.replace_in_dir(dirfd, "x", b"newer", 0o600)
        assert not live.exists() and not young.exists()
        assert (tmp_path / "x").read_bytes() == b"newer"
        assert (tmp_path / "x").stat().st_mode & 0o777 == 0o600
        assert sorted(os.listdir(tmp_path)) == ["x"]
    finally:
        os.close(dirfd)


def test_replace_in_dir_never_writes_through_a_planted_fifo(tmp_path):
    """A FIFO at the final name is replaced by rename, never opened."""
    os.mkfifo(tmp_path / "cache")
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        files.replace_in_dir(dirfd, "cache", b"data", 0o644)
    finally:
        os.close(dirfd)
    assert (tmp_path / "cache").read_bytes() == b"data"


def test_a_failed_ldcache_hook_puts_back_the_links_it_replaced(tmp_path, monkeypatch):
    """update_rootfs retargets the image's own link, then fails writing the cache: the
    link points where it did before, and the links it made are gone."""
    from nvlaunch.exec import ldcache_writer
    root = tmp_path / "rootfs"
    lib = root / "usr" / "lib"
    lib.mkdir(parents=True)
    (root / "etc").mkdir()
    os.symlink("libcuda.so.image", lib / "libcuda.so.1")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ldcache_writer, "write_in_root", boom)
    with pytest.raises(OSError):
        ldcache_writer.update_rootfs(str(root), [("libcuda.so.580", "/usr/lib/libcuda.so.1"),
                                                 ("libcuda.so.1", "/usr/lib/libcuda.so")],
                                     [("libcuda.so.1", "/usr/lib/libcuda.so.1", False)])
    assert os.readlink(lib / "libcuda.so.1") == "libcuda.so.image"
    assert sorted(os.listdir(lib)) == ["libcuda.so.1"]


def test_a_failed_injection_puts_back_the_links_it_replaced(tmp_path):
    from nvlaunch.exec.inject import inject
    from nvlaunch.plan.records import Plan, Symlink, WriteFile
    from tests.fakes import FakeKernel
    root = tmp_path / "rootfs"
    lib = root / "usr" / "lib"
    lib.mkdir(parents=True)
    os.symlink("libcuda.so.image", lib / "libcuda.so.1")
    (root / "etc").mkdir()
    (root / "etc" / "x").mkdir()                 # a directory where a file must go: fails
    plan = Plan(entries=(Symlink("libcuda.so.580", "/usr/lib/libcuda.so.1"),
                         Symlink("libcuda.so.1", "/usr/lib/libcuda.so"),
                         WriteFile("/etc/x", b"data", 0o644)))
    with pytest.raises(OSError):
        inject(plan, str(root), FakeKernel())
    assert os.readlink(lib / "libcuda.so.1") == "libcuda.so.image"
    assert sorted(os.listdir(lib)) == ["libcuda.so.1"]
