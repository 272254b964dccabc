"""Small host-file helpers shared by the front ends: atomic writes, JSON objects."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from nvlaunch.core.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


TEMP_MARK = ".nvlaunch-"     # in the name of every temporary file nvlaunch makes
STALE_S = 60                 # a temporary older than this, and unlocked, was left by a killed writer


class _Os:
    """The calls replace_in_dir makes, for callers without a Kernel object (the Kernel
    protocol of nvlaunch.kernel has the same names and signatures)."""
    open = staticmethod(os.open)
    close = staticmethod(os.close)
    rename = staticmethod(os.rename)
    unlink = staticmethod(os.unlink)

    @staticmethod
    def write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


OS = _Os()


def temp_name(name: str) -> str:
    """A temporary name beside `name`: random, so that no two writers collide whatever
    their pids (a pid is the same in every fresh pid namespace)."""
    return f".{name}{TEMP_MARK}{os.urandom(8).hex()}"


def replace_in_dir(dirfd: int, name: str, data: bytes, mode: int, ops: Any = OS,
                   sync: bool = False, proc: str = "/proc") -> None:
    """`name` in the directory `dirfd` replaced atomically by a file holding `data`:
    written unnamed (O_TMPFILE), flock()ed, linked as temp_name(name) through
    `proc`/self/fd and renamed over `name`; where the filesystem has no O_TMPFILE,
    created under temp_name(name) (O_EXCL, O_NOFOLLOW, O_NONBLOCK: never through a link,
    never waiting on a FIFO planted there).  A later writer tells a temporary whose
    writer was killed (old and unlocked: removed, remove_stale) from one being written
    now (kept).  `ops`: a Kernel."""
    remove_stale(dirfd, name, ops, proc)
    tmp = temp_name(name)
    try:
        # Unnamed until written and locked (O_TMPFILE): a killed writer leaves nothing.
        fd = ops.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=dirfd)
        named = False
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        # A filesystem without O_TMPFILE (overlayfs before 6.6): named from the start;
        # remove_stale spares temporaries younger than STALE_S, locked or not yet.
        fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK
                      | os.O_CLOEXEC, mode, dir_fd=dirfd)
        named = True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ops.write_all(fd, data)
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
        if not named:
            os.link(f"{proc}/self/fd/{fd}", tmp, dst_dir_fd=dirfd, follow_symlinks=True)
            named = True
        ops.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        if named:
            try:
                ops.unlink(tmp, dir_fd=dirfd)
            except OSError:
                pass
        raise
    finally:
        ops.close(fd)


def remove_stale(dirfd: int, name: str, ops: Any = OS, proc: str = "/proc") -> int:
    """Remove the temporaries of `name` in `dirfd` that a killed writer left: regular
    files and links older than STALE_S that nobody holds a lock on (a writer creates
    then locks its file: a young one may be in between), anything else with the mark
    at once.  Each is looked at through an O_PATH fd (no open(2) of a planted device).
    Returns how many went."""
    prefix = f".{name}{TEMP_MARK}"
    lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        names = [n for n in os.listdir(lfd) if n.startswith(prefix)]
    finally:
        os.close(lfd)
    gone = 0
    for n in names:
        try:
            pfd = os.open(n, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            continue
        try:
            st = os.fstat(pfd)
            young = time.time() - st.st_mtime < STALE_S
            if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and young:
                continue
            if stat.S_ISREG(st.st_mode):
                fd = os.open(f"{proc}/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue                    # being written right now
                finally:
                    os.close(fd)
            ops.unlink(n, dir_fd=dirfd)
            gone += 1
        except OSError:
            continue
        finally:
            os.close(pfd)
    return gone


def write_atomic(path: str, data: str | bytes, mode: int | None = None) -> None:
    """Write `data` (str or bytes) to `path` through a temporary file in the same directory,
    fsync and rename(2) (replace_in_dir): a reader (a runtime scanning its spec or hooks
    directory, a daemon reading its config) never sees half a file.  `mode` None keeps
    the mode of the file being replaced (0644 for a new one)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    directory, name = os.path.split(os.path.abspath(path))
    dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_in_dir(dirfd, name, data, mode, sync=True)
    finally:
        os.close(dirfd)


def load_json_object(path: str, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; UsageError naming the file otherwise.  With
    `missing_ok` (a config file setup is about to create) a missing or empty file is {}."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if missing_ok and not raw.strip():
            return {}
        from nvlaunch.core import jsonread     # (the C scanner: only where JSON is read)
        data = jsonread.loads(raw)
    except FileNotFoundError as err:
        if missing_ok:
            return {}
        raise UsageError(f"{path}: {err.strerror}") from None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror}") from None
    except ValueError as err:
        raise UsageError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a JSON object")
    return data
