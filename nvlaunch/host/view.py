"""Where the host is read from: the driver, device and proc roots of the contract.

Every host path nvlaunch reads goes through a HostView, so tests point it at a fake
host tree (see tests/fakehost.py) and the real host is just HostView() with "/" roots.
"""
from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    # what probe() saw at a path: a node's identity, a directory's names, a file's bytes
    Probe = tuple[int, ...] | tuple[str, ...] | bytes | None

ENV_DRIVER_ROOT = "NVLAUNCH_DRIVER_ROOT"
ENV_DEV_ROOT = "NVLAUNCH_DEV_ROOT"
ENV_PROC_ROOT = "NVLAUNCH_PROC_ROOT"


def _join(root: str, path: str) -> str:
    path = path.lstrip("/")
    return root if not path else (root.rstrip("/") + "/" + path if root != "/" else "/" + path)


class HostView:
    """The three host roots; paths given to the helpers are absolute host paths.

    A view made by recording() also keeps every host path its helpers gave out, with
    how it was used ("node": looked up or stat-ed, "data": a small file read whole,
    "names": a directory listed).  What a plan was built from is then exactly its
    `reads`, and fingerprint(reads) tells whether any of it changed (plan.cache)."""
    __slots__ = ("driver_root", "dev_root", "proc_root", "reads")

    def __init__(self, driver_root: str = "/", dev_root: str = "/", proc_root: str = "/",
                 reads: dict[str, str] | None = None):
        self.driver_root, self.dev_root, self.proc_root = driver_root, dev_root, proc_root
        self.reads = reads

    @classmethod
    def from_env(cls, driver_root: str | None = None, dev_root: str | None = None,
                 proc_root: str | None = None, environ: Mapping[str, str] = os.environ) -> HostView:
        """Options win over variables; variables win over the real host."""
        def pick(opt: str | None, var: str) -> str:
            val = opt or environ.get(var) or "/"
            return os.path.abspath(val)
        return cls(pick(driver_root, ENV_DRIVER_ROOT), pick(dev_root, ENV_DEV_ROOT),
                   pick(proc_root, ENV_PROC_ROOT))

    @classmethod
    def from_options(cls, gopts: Mapping[str, Any] | None) -> HostView:
        """The view of the global options (--driver-root, ...), else the variables."""
        g = gopts or {}
        return cls.from_env(g.get("driver_root"), g.get("dev_root"), g.get("proc_root"))

    @property
    def roots(self) -> tuple[str, str, str]:
        return (self.driver_root, self.dev_root, self.proc_root)

    def recording(self) -> HostView:
        """The same roots, recording every path given out from now on."""
        return HostView(*self.roots, reads={})

    def _give(self, path: str, kind: str) -> str:
        if self.reads is not None:
            self.reads.setdefault(path, kind)
        return path

    def driver(self, path: str, kind: str = "node") -> str:
        """`path` (absolute, as the ld cache names it) under the driver root."""
        return self._give(_join(self.driver_root, path), kind)

    def dev(self, path: str, kind: str = "node") -> str:
        """`path` such as /dev/nvidia0 under the device root."""
        return self._give(_join(self.dev_root, path), kind)

    def proc(self, path: str, kind: str = "data") -> str:
        """`path` such as /proc/driver/nvidia/version under the proc root."""
        return self._give(_join(self.proc_root, path), kind)

    def env(self) -> dict[str, str]:
        """The variables that carry this view to a child nvlaunch (a hook, say)."""
        return {ENV_DRIVER_ROOT: self.driver_root, ENV_DEV_ROOT: self.dev_root,
                ENV_PROC_ROOT: self.proc_root}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostView) and self.roots == other.roots

    def __hash__(self) -> int:
        return hash(self.roots)

    def __repr__(self) -> str:
        return (f"HostView(driver_root={self.driver_root!r}, dev_root={self.dev_root!r}, "
                f"proc_root={self.proc_root!r})")


MAX_DATA = 1 << 20      # a /proc/driver/nvidia file is a few hundred bytes


def probe(path: str, kind: str) -> Probe:
    """What a recorded read saw at `path`, as a comparable value (None: absent).  For a
    node: its identity (type, inode; for files also size and mtime; for device nodes the
    device number); a directory's mtime is left out, since /run or /tmp change all the
    time while what was looked up in them did not."""
    try:
        if kind == "node":
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR or fmt == stat.S_IFSOCK:
                return (st.st_mode, st.st_ino)
            if fmt == stat.S_IFCHR or fmt == stat.S_IFBLK:
                return (st.st_mode, st.st_ino, st.st_rdev)
            return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)
        if kind == "names":
            return tuple(sorted(os.listdir(path)))
        with open(path, "rb") as f:
            return f.read(MAX_DATA)
    except IsADirectoryError:
        return probe(path, "names")
    except (OSError, ValueError):
        return None


def fingerprint(reads: dict[str, str] | tuple[tuple[str, str], ...]) -> tuple[Probe, ...]:
    """probe() of every read, in path order (a dict is sorted; a tuple of (path, kind)
    pairs, as the plan cache stores them, is taken in its order).  A hit of the plan
    cache checks a hundred paths or so, so the node case is probe() inlined."""
    items = sorted(reads.items()) if isinstance(reads, dict) else reads
    lstat = os.lstat
    out: list[Probe] = []
    append = out.append
    for path, kind in items:
        if kind != "node":
            append(probe(path, kind))
            continue
        try:
            st = lstat(path)
        except (OSError, ValueError):
            append(None)
            continue
        fmt = st.st_mode & 0o170000
        if fmt == stat.S_IFDIR or fmt == stat.S_IFSOCK:
            append((st.st_mode, st.st_ino))
        elif fmt == stat.S_IFCHR or fmt == stat.S_IFBLK:
            append((st.st_mode, st.st_ino, st.st_rdev))
        else:
            append((st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def is_initial_root(proc_root: str = "/") -> bool:
    """True for root in the initial user namespace, whose uid_map is the identity
    "0 0 4294967295" (user_namespaces(7)): the only caller that holds real privileges
    (device cgroups, the capability bounding set).  Unreadable means no."""
    if os.geteuid() != 0:
        return False
    try:
        with open(_join(proc_root, "/proc/self/uid_map")) as f:
            lines = [ln.split() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return False
    return lines == [["0", "0", "4294967295"]]


def read_text(path: str) -> str | None:
    """A small file's text, or None where it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
