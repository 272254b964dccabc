"""Reuse a launch's plan on the next launch, until the driver or the GPUs change.

Building a plan means importing the discovery modules, parsing the ld cache, reading
/proc and stat-ing device nodes: about half of nvlaunch's own setup time.  The result
depends only on the request and on host state that changes when the driver does, so it
is kept in a small file per request and reused while its fingerprint still matches:

- the text of proc/driver/nvidia/version (a driver reload changes it),
- inode, size and mtime of the driver root's etc/ld.so.cache (ldconfig rewrites it),
- the list of proc/driver/nvidia/gpus (a GPU appearing or going away),
- the mtimes of the dev root's /dev and /dev/nvidia-caps (nodes added or removed),
- the mtimes of the modules that build plans (a new nvlaunch).

Files live in a directory only the caller can write ($XDG_RUNTIME_DIR/nvlaunch, else
/run/nvlaunch for root or /tmp/nvlaunch-UID), checked with lstat before each use; any
doubt means no cache.  Stored with marshal (builtin, no import cost); records are kept
as (type name, fields).  NVLAUNCH_NO_CACHE=1 turns it off.  At most MAX_PLANS files are
kept: each store (a miss) removes the least recently written beyond that.
"""
from __future__ import annotations

import marshal
import os
import stat

from nvlaunch.plan import records as P

FORMAT = 1
MAX_PLANS = 64
_RECORDS = {cls.__name__: cls for cls in (P.BindFile, P.BindDir, P.BindDevice, P.Symlink,
                                           P.WriteFile, P.Tmpfs)}
_CODE = ("plan/build.py", "host/driver.py", "host/gpus.py", "host/ldcache.py", "plan/records.py", "plan/cache.py")


def cache_dir(create: bool = True) -> str | None:
    """Our private cache directory, or None if it is missing or not safe to use."""
    uid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        path = os.path.join(xdg, "nvlaunch")
    else:
        path = "/run/nvlaunch" if uid == 0 else f"/tmp/nvlaunch-{uid}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(path, 0o700)
            st = os.lstat(path)
        except OSError:
            return None
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return path


def _stat_key(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def fingerprint(host) -> tuple:
    try:
        with open(host.proc("/proc/driver/nvidia/version"), "rb") as f:
            version = f.read()
    except OSError:
        version = None
    try:
        gpus = tuple(sorted(os.listdir(host.proc("/proc/driver/nvidia/gpus"))))
    except OSError:
        gpus = None
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (version, _stat_key(host.driver("/etc/ld.so.cache")), gpus,
            _stat_key(host.dev("/dev")), _stat_key(host.dev("/dev/nvidia-caps")),
            tuple(_stat_key(os.path.join(here, name)) for name in _CODE))


def key(host, request, libdir) -> tuple:
    return (FORMAT, tuple(host), tuple(request), libdir, fingerprint(host))


def _file(directory: str, k: tuple) -> str:
    import zlib
    name = zlib.crc32(repr(k[:4]).encode())   # one file per request; the key is checked inside
    return os.path.join(directory, f"plan-{name:08x}")


def load(k: tuple):
    """The cached plan for key `k`, or None."""
    if os.environ.get("NVLAUNCH_NO_CACHE") == "1":
        return None
    directory = cache_dir(create=False)
    if directory is None:
        return None
    try:
        fd = os.open(_file(directory, k), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            stored_key, data = marshal.loads(f.read())
        except (EOFError, ValueError, TypeError):
            return None
    if stored_key != k:
        return None
    try:
        return _decode(data)
    except (KeyError, TypeError, ValueError):
        return None


def store(k: tuple, plan) -> None:
    if os.environ.get("NVLAUNCH_NO_CACHE") == "1":
        return
    directory = cache_dir()
    if directory is None:
        return
    path = _file(directory, k)
    tmp = f"{path}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps((k, _encode(plan))))
        os.rename(tmp, path)
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass
    _prune(directory)


def _prune(directory: str) -> None:
    """Remove the oldest plan files beyond MAX_PLANS (one file per distinct request and
    host root, so a long-lived host with varied requests would otherwise grow it)."""
    try:
        with os.scandir(directory) as it:
            plans = [(e.stat(follow_symlinks=False).st_mtime_ns, e.path) for e in it
                     if e.name.startswith("plan-") and "." not in e.name]
    except OSError:
        return
    if len(plans) <= MAX_PLANS:
        return
    plans.sort()
    for _, path in plans[:len(plans) - MAX_PLANS]:
        try:
            os.unlink(path)
        except OSError:
            pass


def drop(k: tuple) -> None:
    directory = cache_dir(create=False)
    if directory:
        try:
            os.unlink(_file(directory, k))
        except OSError:
            pass


def cached_plan(request, host, libdir):
    """(plan, key): the plan for this request, from the cache while the host is unchanged,
    else built (build.build_plan) and stored.  `key` lets a caller drop() a plan that failed."""
    k = key(host, request, libdir)
    plan = load(k)
    if plan is None:
        from nvlaunch.plan.build import build_plan
        plan = build_plan(request, host, libdir)
        store(k, plan)
    return plan, k


def plan_for_rootfs(request, host, rootfs: str):
    """(plan, key) for a container whose rootfs is at host path `rootfs`: its library
    directory picks the cached plan, then the system libraries the driver needs are
    settled against what the rootfs has (plan.settle_absent)."""
    from nvlaunch.plan.records import settle_absent
    from nvlaunch.exec.inroot import container_libdir, libraries_present
    plan, k = cached_plan(request, host, container_libdir(rootfs))
    return settle_absent(plan, lambda names: libraries_present(rootfs, names)), k


def _encode(plan) -> tuple:
    rec = lambda e: (type(e).__name__, tuple(e))  # noqa: E731
    return (tuple(map(rec, plan.entries)), tuple(map(rec, plan.devices)), plan.env, plan.libdir,
            plan.ldcache, plan.notes)


def _decode(data: tuple):
    entries, devices, env, libdir, ldcache, notes = data
    make = lambda item: _RECORDS[item[0]](*item[1])  # noqa: E731
    return P.Plan(tuple(map(make, entries)), tuple(map(make, devices)), env, libdir, ldcache, notes)
