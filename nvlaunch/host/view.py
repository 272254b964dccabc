"""Where the host is read from: the driver, device and proc roots of the contract.

Every host path nvlaunch reads goes through a HostView, so tests point it at a fake
host tree (see tests/fakehost.py) and the real host is just HostView() with "/" roots.
"""
from __future__ import annotations

import os
from nvlaunch.core.records import record

ENV_DRIVER_ROOT = "NVLAUNCH_DRIVER_ROOT"
ENV_DEV_ROOT = "NVLAUNCH_DEV_ROOT"
ENV_PROC_ROOT = "NVLAUNCH_PROC_ROOT"


def _join(root: str, path: str) -> str:
    path = path.lstrip("/")
    return root if not path else (root.rstrip("/") + "/" + path if root != "/" else "/" + path)


@record
class HostView:
    """The three host roots; paths given to the helpers are absolute host paths."""
    driver_root: str = "/"
    dev_root: str = "/"
    proc_root: str = "/"

    @classmethod
    def from_env(cls, driver_root=None, dev_root=None, proc_root=None, environ=os.environ):
        """Options win over variables; variables win over the real host."""
        def pick(opt, var):
            val = opt or environ.get(var) or "/"
            return os.path.abspath(val)
        return cls(pick(driver_root, ENV_DRIVER_ROOT), pick(dev_root, ENV_DEV_ROOT),
                   pick(proc_root, ENV_PROC_ROOT))

    def driver(self, path: str) -> str:
        """`path` (absolute, as the ld cache names it) under the driver root."""
        return _join(self.driver_root, path)

    def dev(self, path: str) -> str:
        """`path` such as /dev/nvidia0 under the device root."""
        return _join(self.dev_root, path)

    def proc(self, path: str) -> str:
        """`path` such as /proc/driver/nvidia/version under the proc root."""
        return _join(self.proc_root, path)

    def env(self) -> dict:
        """The variables that carry this view to a child nvlaunch (a hook, say)."""
        return {ENV_DRIVER_ROOT: self.driver_root, ENV_DEV_ROOT: self.dev_root,
                ENV_PROC_ROOT: self.proc_root}


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
