"""The plan cache: a reused plan equals a freshly built one; it is keyed on what the
builder actually read (HostView.recording), so a change to any of it makes the next
launch build again, and a change to anything it did not read does not."""
import os
import socket

import pytest

from nvlaunch.core.errors import DiscoveryError
from nvlaunch.host.view import HostView, fingerprint
from nvlaunch.plan import cache as plancache
from nvlaunch.plan.request import Request
from tests.fakehost import build_fake_host

LIBDIR = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.mkdir(tmp_path / "run", 0o700)
    # as any user: without root the device nodes are links to /dev/null (a character
    # device, whose number the cache does not care about)
    h = build_fake_host(str(tmp_path / "host"), gpus=2, stand_ins=True)
    return h, HostView(h.root, h.root, h.root)


@pytest.fixture
def builds(monkeypatch):
    """How many plans were built (cache misses)."""
    count = []
    real = plancache.checked_plan

    def counting(*args, **kw):
        count.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(plancache, "checked_plan", counting)
    return count


def plan(host, req=Request("all", "all")):
    return plancache.cached_plan(req, host, LIBDIR)[0]


def test_round_trip(setup, builds):
    h, host = setup
    first = plan(host)
    assert plan(host) == first and len(builds) == 1            # the second is a hit
    assert plan(host, Request("0", "all")) is not None and len(builds) == 2   # another request
    assert plancache.checked_plan(Request("all", "all"), host, LIBDIR) == first


def test_the_key_is_what_the_builder_read(setup):
    h, host = setup
    rec = host.recording()
    plancache.checked_plan(Request("all", "compute,utility"), rec, LIBDIR)
    reads = rec.reads
    assert reads[host.proc("/proc/driver/nvidia/version")] == "data"
    assert reads[host.proc("/proc/driver/nvidia/gpus")] == "names"
    assert reads[host.dev("/dev/nvidia-uvm")] == "node"
    assert host.driver("/etc/ld.so.cache") in reads
    # an IPC socket looked for and not found is part of the key too
    assert any("nvidia-persistenced" in p for p in reads)
    assert fingerprint(reads) == fingerprint(dict(reads))      # stable while nothing changes


def _rewrite(path, old, new):
    os.chmod(path, 0o644)          # the driver's files are 0444
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(old, new) if old else text + new)


@pytest.mark.parametrize("change", ["version", "params", "registry", "ldcache", "gpu", "devnode",
                                    "socket", "dri", "library"])
def test_invalidated_by_what_it_read(setup, builds, change):
    h, host = setup
    plan(host)
    plan(host)
    assert len(builds) == 1
    if change == "version":
        _rewrite(host.proc("/proc/driver/nvidia/version"), "580.159.04", "580.159.05")
    elif change in ("params", "registry"):
        _rewrite(host.proc(f"/proc/driver/nvidia/{change}"), None, "EnableXyz: 1\n")
    elif change == "ldcache":
        p = host.driver("/etc/ld.so.cache")
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "gpu":
        os.rename(host.proc(f"/proc/driver/nvidia/gpus/{h.gpus[1].bus_id}"),
                  host.proc("/proc/driver/nvidia/gpus/0000:99:00.0"))
    elif change == "devnode":
        os.unlink(host.dev(f"/dev/nvidia{h.gpus[1].minor}"))
    elif change == "socket":       # nvidia-persistenced started after the first launch
        d = host.driver("/run/nvidia-persistenced")
        os.makedirs(d, exist_ok=True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(d, "socket"))
        s.close()
    elif change == "dri":          # a GPU's DRM card node goes (graphics is asked for)
        os.unlink(host.dev(f"/dev/dri/by-path/pci-{h.gpus[0].bus_id.lower()}-card"))
    elif change == "library":      # a driver library replaced in place
        p = os.path.join(h.lib_dir, f"libnvidia-ml.so.{h.driver_version}")
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        after = plan(host)
    except DiscoveryError:      # the new state is not a usable host: it was read again all the same
        after = None
    assert len(builds) == 2, f"a {change} change did not make the cache miss"
    if change == "socket":
        assert any(getattr(e, "dst", "").endswith("nvidia-persistenced/socket") for e in after.entries)


def test_not_invalidated_by_what_it_did_not_read(setup, builds, tmp_path):
    h, host = setup
    plan(host)
    # files come and go in directories it looked into (as in /run or /tmp all the time)
    for d in ("etc", "dev", "proc/driver/nvidia"):
        open(os.path.join(h.root, d, "unrelated"), "w").close()
    os.mkdir(os.path.join(h.root, "etc", "unrelated.d"))
    plan(host)
    assert len(builds) == 1


def test_a_requirement_is_checked_before_a_plan_is_stored(setup, builds):
    from nvlaunch.core.errors import RequirementError
    h, host = setup
    req = Request("all", None, env=(("NVIDIA_REQUIRE_DRIVER", "driver>=999"),))
    for _ in range(2):                       # a failed check is never cached
        with pytest.raises(RequirementError):
            plancache.cached_plan(req, host, LIBDIR)
    assert len(builds) == 2


def test_unsafe_directory_is_not_used(setup, tmp_path):
    h, host = setup
    os.chmod(tmp_path / "run", 0o777)
    d = tmp_path / "run" / "nvlaunch"
    os.mkdir(d, 0o777)       # writable by others: never trusted
    os.chmod(d, 0o777)
    assert plancache.cache_dir() is None
    plan(host)
    assert os.listdir(d) == []


def test_disabled_by_env(setup, builds, monkeypatch):
    h, host = setup
    plan(host)
    monkeypatch.setenv("NVLAUNCH_NO_CACHE", "1")
    plan(host)
    assert len(builds) == 2


def test_cache_is_bounded_and_keeps_the_newest(setup, tmp_path, monkeypatch):
    h, host = setup
    monkeypatch.setattr(plancache, "MAX_PLANS", 4)
    req = Request("all", "all")
    keys = [plancache.key(host, req, f"/lib{i}") for i in range(7)]
    for i, k in enumerate(keys):
        plancache.cached_plan(req, host, f"/lib{i}")
        path = os.path.join(str(tmp_path / "run" / "nvlaunch"), plancache._name(k))
        os.utime(path, ns=(i * 10**9, i * 10**9))   # distinct, ordered write times
    left = sorted(os.listdir(tmp_path / "run" / "nvlaunch"))
    assert len(left) == 4, left
    assert [plancache.load(k) is not None for k in keys] == [False] * 3 + [True] * 4


def test_the_code_key_covers_every_module_a_plan_build_loads(setup):
    """A new nvlaunch must make new plans: every module that building one imports is in
    plan.cache.CODE, whose files' identities are part of the key."""
    import subprocess
    import sys
    from tests.conftest import REPO
    h, host = setup
    code = ("import sys\nfrom nvlaunch.host.view import HostView\nfrom nvlaunch.plan import cache\n"
            "from nvlaunch.plan.request import Request\nbefore = set(sys.modules)\n"
            f"cache.checked_plan(Request('all', 'all', env=(('NVIDIA_REQUIRE_DRIVER', 'driver>=1'),)),"
            f" HostView(*{host.roots!r}), '/usr/lib/x86_64-linux-gnu')\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('nvlaunch.')"
            " and hasattr(sys.modules[m], '__file__'))))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = {m[len("nvlaunch."):].replace(".", "/") + ".py" for m in r.stdout.split()}
    loaded = {m for m in loaded if not m.endswith("__init__.py") and m.split("/")[0] in ("core", "host", "plan")}
    missing = loaded - set(plancache.CODE)
    assert not missing, f"plan.cache.CODE lacks {sorted(missing)}"
