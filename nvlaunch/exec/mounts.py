"""The mount steps both executors share (run's root builder and the hooks' injector):
a mount or bind that fails as one MountError naming source, target and flags (runc's
mountError), and where a tmpfs goes when its directory does not exist yet."""
from __future__ import annotations


from nvlaunch.core import consts as C
from nvlaunch.core import errors as E


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from nvlaunch.kernel.protocol import Kernel


def mount(kernel: Kernel, source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None, op: str = "mount", shown_target: str | None = None) -> None:
    try:
        kernel.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise E.MountError(op, source, shown_target or target, C.flags_str(flags), err) from err


def bind(kernel: Kernel, source: str, target: str, flags: int, shown_source: str | None = None,
         shown_target: str | None = None) -> None:
    try:
        kernel.bind_mount(source, target, flags)
    except OSError as err:
        raise E.MountError("bind", shown_source or source, shown_target or target,
                           C.flags_str(C.MS_BIND | flags), err) from err


TMPFS_FLAGS = C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC


def tmpfs_place(dst: str, is_dir: Callable[[str], bool]) -> tuple[str, list[str]]:
    """(where the tmpfs for container path `dst` is mounted, the directories to make
    inside it).  Under /proc nothing can be created, so where `dst` does not exist (a
    host without /proc/driver/nvidia, a test tree) the tmpfs goes on the nearest
    existing ancestor and the rest is made inside it; never on /proc itself."""
    where = dst
    missing: list[str] = []
    while not is_dir(where):
        where, _, name = where.rpartition("/")
        missing.insert(0, name)
        if not where:
            raise E.ContainerPathError(f"{dst}: no parent directory in the container")
    if where == "/proc":
        raise E.ContainerPathError(f"{dst}: /proc/driver is missing in the container")
    return where, missing
