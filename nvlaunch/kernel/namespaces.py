"""Joining a running container's namespaces (the OCI hook's injector): open them from
the container's pid, enter user then mnt (the user namespace grants the capabilities
for the rest, setns(2)), and become that namespace's root."""
from __future__ import annotations

import os

from nvlaunch.core import errors as E
from nvlaunch.core.consts import CLONE_NEWNS, CLONE_NEWUSER
from nvlaunch.kernel.real import REAL


TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.kernel.protocol import Kernel

# Where namespaces of processes are read: always the real /proc (the proc root of the
# contract is where the *driver's* /proc files are read, a fake host in tests).
PROC = "/proc"


class Namespaces:
    """fds of a container's user (None when it is ours) and mount namespaces."""

    def __init__(self, user_fd: int | None, mnt_fd: int, pid: int):
        self.user_fd: int | None = user_fd
        self.mnt_fd: int | None = mnt_fd
        self.pid = pid

    def close(self) -> None:
        for fd in (self.user_fd, self.mnt_fd):
            if fd is not None:
                os.close(fd)
        self.user_fd = self.mnt_fd = None

    def enter(self, kernel: Kernel = REAL) -> None:
        """Join them (in a single-threaded child that the caller forked)."""
        if self.user_fd is not None:
            kernel.setns(self.user_fd, CLONE_NEWUSER, f"{PROC}/{self.pid}/ns/user")
            become_root()
        if self.mnt_fd is None:
            raise E.NamespaceError("namespaces already closed")
        kernel.setns(self.mnt_fd, CLONE_NEWNS, f"{PROC}/{self.pid}/ns/mnt")


def open_namespaces(pid: int) -> Namespaces:
    paths = {n: f"{PROC}/{pid}/ns/{n}" for n in ("user", "mnt")}
    fds: dict[str, int] = {}
    try:
        for name, path in paths.items():
            try:
                fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                raise E.NamespaceError(f"open {path}: {err.strerror} (did the container exit?)",
                                       errno=err.errno) from None
        same = {}
        for name in ("user", "mnt"):
            mine, theirs = os.stat(f"{PROC}/self/ns/{name}"), os.fstat(fds[name])
            same[name] = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
        if same["mnt"]:
            raise E.NamespaceError(f"container pid {pid} shares the runtime's mount namespace; "
                                   "refusing to mount into it")
        if same["user"]:
            os.close(fds.pop("user"))
        return Namespaces(fds.get("user"), fds["mnt"], pid)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise


def become_root() -> None:
    """After joining a user namespace: uid/gid 0 of that namespace (what nsenter -U does).
    setns(2) keeps our kernel ids, and host root (kuid 0) is not mapped in a remapped
    container: files it creates on the container's own filesystems (the /dev tmpfs the
    runtime mounted in that namespace) fail with EOVERFLOW, and the capabilities it gets
    there do not cover rootfs files owned by the mapped ids.  Container root has both.
    Where 0 is not mapped (EINVAL) the ids stay as they were."""
    try:
        os.setgroups([])
    except OSError:
        pass                    # /proc/PID/setgroups "deny": keep the groups we have
    for setter in (os.setresgid, os.setresuid):
        try:
            setter(0, 0, 0)
        except OSError:
            pass
