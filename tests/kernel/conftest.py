"""Fixtures for the real-kernel tests: container rootfs trees and host directories that the
unprivileged test users (nvltest, nobody) can reach.

pytest's tmp_path lives under /tmp/pytest-of-root (mode 0700), out of reach of the test
users, so these fixtures make their own world-traversable directories under /tmp.
build_rootfs() copies (cp -a) one cached template per layout, so a fresh rootfs per test
costs a few milliseconds.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def world_dir(prefix: str, mode: int = 0o755) -> str:
    """A new directory under /tmp that every user can traverse (the caller removes it)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, mode)
    return d


@pytest.fixture
def make_rootfs():
    """make_rootfs(layout="debian", probe=False) -> path of a fresh rootfs (owned by root,
    mode 0755) under a world-traversable directory; all removed after the test."""
    from tests.fakehost import build_rootfs
    made = []

    def make(layout: str = "debian", probe: bool = False) -> str:
        parent = world_dir("nvl-rootfs-")
        made.append(parent)
        dest = os.path.join(parent, "rootfs")
        build_rootfs(dest, layout=layout, probe=probe)
        os.chmod(dest, 0o755)
        return dest

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rootfs(make_rootfs) -> str:
    """A fresh busybox rootfs (no probe)."""
    return make_rootfs()


@pytest.fixture
def hostdir():
    """An empty host directory every user may write (mode 0777), removed after the test."""
    d = world_dir("nvl-host-", 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fake():
    """A fake host with 2 GPUs and real device nodes, in a world-traversable directory."""
    from tests.conftest import require_root
    from tests.fakehost import build_fake_host
    require_root("mknod for the fake host's device nodes")
    d = world_dir("nvl-host-")
    fh = build_fake_host(os.path.join(d, "host"), gpus=2)
    assert fh.real_nodes
    yield fh
    shutil.rmtree(d, ignore_errors=True)
