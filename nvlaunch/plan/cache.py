"""Reuse a launch's plan on the next launch, while nothing it was built from changed.

Building a plan means importing the discovery modules, parsing the ld cache, reading
/proc and stat-ing device nodes: about half of nvlaunch's own setup time.  So the plan is
built through a recording HostView (host.view): every host path discovery and the
builder looked at is kept with how it was used, and stored beside the plan with what
was seen there (host.view.fingerprint).  A later launch with the same request reuses
the plan only while every one of those paths still shows the same thing: the version
and params/registry text under /proc/driver/nvidia, the GPU list, each device node
(present or not), the ld cache file, each library and binary looked up (found or not),
each IPC socket (an nvidia-persistenced started since then is a change).  The key
itself is the request, the host roots, the container library directory and the code
that builds plans (its files' identities).

Before a plan is built its NVIDIA_REQUIRE_* conditions are checked here (plan.require),
with the CUDA version asked from host.cuda only when a condition names cuda; a plan that
is stored passed them, and its key holds those variables.

Files live in a directory only the caller can write ($XDG_RUNTIME_DIR/nvlaunch, else
/run/nvlaunch for root or /tmp/nvlaunch-UID), checked with lstat before each use; any
doubt means no cache.  Stored with marshal (builtin, no import cost); records as (type
name, values).  NVLAUNCH_NO_CACHE=1 turns it off.  At most MAX_PLANS files are kept:
each store (a miss) removes the least recently written beyond that.
"""
from __future__ import annotations

import marshal
import os

from nvlaunch.core.records import rebuild, values
from nvlaunch.host.container import container_libdir, libraries_present
from nvlaunch.host.view import HostView, fingerprint
from nvlaunch.plan import records as P
from nvlaunch.plan import cachedir
from nvlaunch.plan.cachedir import cache_dir
from nvlaunch.plan.request import Request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


    Key = tuple[Any, ...]     # see key(): what marshal stores and compares

FORMAT = 2
MAX_PLANS = 64
REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
_RECORDS = {cls.__name__: cls for cls in (P.BindFile, P.BindDir, P.BindDevice, P.Symlink,
                                           P.WriteFile, P.Tmpfs)}
# The packages whose code decides what a plan holds.
# The modules whose code decides what a plan holds (tests/unit/test_plancache.py checks
# that every module a plan build loads is here): a new nvlaunch makes new plans.
CODE = ("core/records.py", "core/errors.py", "core/consts.py",
        "host/view.py", "host/inroot.py", "host/ldcache.py", "host/elf.py", "host/driver.py",
        "host/driver_files.py", "host/gpus.py", "host/syslibs.py", "host/cuda.py", "host/container.py",
        "plan/records.py", "plan/request.py", "plan/capabilities.py", "plan/selection.py",
        "plan/require.py", "plan/build.py", "plan/cache.py", "plan/cachedir.py")


def _code_key() -> tuple[tuple[str, int, int] | None, ...]:
    """(size, mtime) of each CODE module."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: list[tuple[str, int, int] | None] = []
    for name in CODE:
        try:
            st = os.stat(os.path.join(pkg, name))
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def key(host: HostView, request: Request, libdir: str | None) -> Key:
    return (FORMAT, host.roots, values(request), libdir, _code_key())


def _name(k: Key) -> str:
    import zlib
    name = zlib.crc32(repr(k[:4]).encode())   # one file per request; the key is checked inside
    return f"plan-{name:08x}"


def load(k: Key) -> P.Plan | None:
    """The cached plan for key `k` whose recorded reads still see the same host, or None."""
    directory = cache_dir(create=False)
    if directory is None:
        return None
    raw = cachedir.read(directory, _name(k))
    if raw is None:
        return None
    try:
        stored_key, reads, seen, data = marshal.loads(raw)
    except (EOFError, ValueError, TypeError):
        return None
    if stored_key != k:
        return None
    try:
        if fingerprint(reads) != seen:
            return None
        return _decode(data)
    except (KeyError, TypeError, ValueError):
        return None


def store(k: Key, reads: tuple[tuple[str, str], ...], plan: P.Plan) -> None:
    """Keep `plan` under key `k` with the reads it was built from ((path, kind) pairs in
    path order) and what they see now (host.view.fingerprint)."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        data = marshal.dumps((k, reads, fingerprint(reads), _encode(plan)))
    except ValueError:
        return
    cachedir.write(directory, _name(k), data, "plan-", MAX_PLANS)


def drop(k: Key) -> None:
    directory = cache_dir(create=False)
    if directory:
        try:
            os.unlink(os.path.join(directory, _name(k)))
        except OSError:
            pass


def checked_plan(request: Request, host: HostView, libdir: str | None) -> P.Plan:
    """A new plan for `request`, its NVIDIA_REQUIRE_* conditions checked first."""
    # Imported here, on a miss only: discovery and the builder cost more than a whole
    # launch that hits; the requirement grammar (it needs `re`) and libcuda only for a
    # request that has requirements.
    from nvlaunch.host.driver import discover
    from nvlaunch.plan.build import build_plan
    if request.void:
        return P.Plan()
    driver = discover(host)
    if any(k.startswith(REQUIRE_PREFIX) for k, _ in request.env):
        from nvlaunch.host import cuda
        from nvlaunch.plan import require
        require.check(dict(request.env), driver.version, lambda: cuda.cuda_driver_version(driver))
    return build_plan(request, host, libdir, driver=driver)


def cached_plan(request: Request, host: HostView, libdir: str | None) -> tuple[P.Plan, Key]:
    """(plan, key): the plan for this request, from the cache while what it was built
    from is unchanged, else built and stored.  `key` lets a caller drop() a plan that
    failed."""
    k = key(host, request, libdir)
    plan = load(k)
    if plan is None:
        recording = host.recording()
        plan = checked_plan(request, recording, libdir)
        store(k, tuple(sorted((recording.reads or {}).items())), plan)
    return plan, k


def plan_for_rootfs(request: Request, host: HostView, rootfs: str) -> tuple[P.Plan, Key]:
    """(plan, key) for a container whose rootfs is at host path `rootfs`: its library
    directory picks the cached plan, then the system libraries the driver needs are
    settled against what the rootfs has (plan.records.settle_absent)."""
    plan, k = cached_plan(request, host, container_libdir(rootfs))
    return P.settle_absent(plan, lambda names: _present(rootfs, names)), k


def _present(rootfs: str, names: Iterable[str]) -> set[str]:
    from nvlaunch.plan.ldmemo import listed      # the rootfs's cache lines, remembered
    return libraries_present(rootfs, names, listed(rootfs, names))


def _encode(plan: P.Plan) -> tuple[Any, ...]:
    def rec(e: P.Entry) -> tuple[str, tuple[Any, ...]]:
        return (type(e).__name__, values(e))
    return (tuple(map(rec, plan.entries)), tuple(map(rec, plan.devices)), plan.env, plan.libdir,
            plan.ldcache, plan.notes)


def _decode(data: tuple[Any, ...]) -> P.Plan:
    entries, devices, env, libdir, ldcache, notes = data

    def make(item: tuple[str, tuple[Any, ...]]) -> Any:     # stored data: checked by use
        return rebuild(_RECORDS[item[0]], item[1])
    return P.Plan(tuple(map(make, entries)), tuple(map(make, devices)), env, libdir, ldcache, notes)
