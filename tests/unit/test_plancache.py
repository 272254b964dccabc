"""The plan cache: a reused plan equals a freshly built one, and any change of the driver,
the ld cache, the GPUs or the device nodes makes it miss."""
import os

import pytest

from nvlaunch.plan import cache as plancache
from nvlaunch.plan.build import build_plan
from nvlaunch.host.view import HostView
from nvlaunch.plan.request import Request
from tests.fakehost import build_fake_host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake host needs mknod")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.mkdir(tmp_path / "run", 0o700)
    h = build_fake_host(str(tmp_path / "host"), gpus=2)
    host = HostView(h.root, h.root, h.root)
    return h, host


def cached(host, req):
    k = plancache.key(host, req, "/usr/lib/x86_64-linux-gnu")
    return k, plancache.load(k)


def test_round_trip(setup):
    h, host = setup
    req = Request("all", "all")
    plan = build_plan(req, host, "/usr/lib/x86_64-linux-gnu")
    k, hit = cached(host, req)
    assert hit is None
    plancache.store(k, plan)
    assert cached(host, req)[1] == plan
    assert cached(host, Request("0", "all"))[1] is None      # another request, another entry


@pytest.mark.parametrize("change", ["version", "ldcache", "gpu", "devnode"])
def test_invalidated_by_host_changes(setup, change):
    h, host = setup
    req = Request("all", None)
    k, _ = cached(host, req)
    plancache.store(k, build_plan(req, host, "/usr/lib/x86_64-linux-gnu"))
    assert cached(host, req)[1] is not None
    if change == "version":
        p = host.proc("/proc/driver/nvidia/version")
        with open(p) as f:
            text = f.read()
        with open(p, "w") as f:
            f.write(text.replace("580.159.04", "580.159.05"))
    elif change == "ldcache":
        p = host.driver("/etc/ld.so.cache")
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "gpu":
        os.rename(host.proc(f"/proc/driver/nvidia/gpus/{h.gpus[1].bus_id}"),
                  host.proc("/proc/driver/nvidia/gpus/0000:99:00.0"))
    elif change == "devnode":
        os.unlink(host.dev(f"/dev/nvidia{h.gpus[1].minor}"))
    assert cached(host, req)[1] is None


def test_unsafe_directory_is_not_used(setup, tmp_path, monkeypatch):
    h, host = setup
    os.chmod(tmp_path / "run", 0o777)
    d = tmp_path / "run" / "nvlaunch"
    os.mkdir(d, 0o777)       # writable by others: never trusted
    os.chmod(d, 0o777)
    assert plancache.cache_dir() is None
    req = Request("all", None)
    k, _ = cached(host, req)
    plancache.store(k, build_plan(req, host, "/usr/lib/x86_64-linux-gnu"))
    assert os.listdir(d) == []


def test_disabled_by_env(setup, monkeypatch):
    h, host = setup
    req = Request("all", None)
    k, _ = cached(host, req)
    plancache.store(k, build_plan(req, host, "/usr/lib/x86_64-linux-gnu"))
    monkeypatch.setenv("NVLAUNCH_NO_CACHE", "1")
    assert cached(host, req)[1] is None


def test_cache_is_bounded_and_keeps_the_newest(setup, tmp_path, monkeypatch):
    h, host = setup
    monkeypatch.setattr(plancache, "MAX_PLANS", 4)
    plan = build_plan(Request("all", "all"), host, "/usr/lib/x86_64-linux-gnu")
    keys = [plancache.key(host, Request("all", "all"), f"/lib{i}") for i in range(7)]
    for i, k in enumerate(keys):
        plancache.store(k, plan)
        path = plancache._file(str(tmp_path / "run" / "nvlaunch"), k)
        os.utime(path, ns=(i * 10**9, i * 10**9))   # distinct, ordered write times
    left = sorted(os.listdir(tmp_path / "run" / "nvlaunch"))
    assert len(left) == 4, left
    assert [plancache.load(k) is not None for k in keys] == [False] * 3 + [True] * 4
