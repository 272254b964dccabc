"""Where nvlaunch keeps what it remembers between starts (plans: plan.cache; merged ld
caches: plan.ldmemo): a directory only the caller can write, $XDG_RUNTIME_DIR/nvlaunch,
else /run/nvlaunch for root or /tmp/nvlaunch-UID, checked with lstat before each use
(a directory of the caller's, mode 0700); any doubt means no cache, and so does
NVLAUNCH_NO_CACHE=1.  Files in it are read and written here only: read() takes nothing
but a regular file of ours, write() replaces atomically and keeps the newest few."""
from __future__ import annotations

import os
import stat

ENV_NO_CACHE = "NVLAUNCH_NO_CACHE"
READ_LIMIT = 64 << 20


def cache_dir(create: bool = True) -> str | None:
    """Our private cache directory, or None if it is missing, not safe to use, or the
    cache is turned off (NVLAUNCH_NO_CACHE=1)."""
    if os.environ.get(ENV_NO_CACHE) == "1":
        return None
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


def read(directory: str, name: str) -> bytes | None:
    """The bytes of `name` in `directory`: a regular file of ours of sane size (never
    through a link, never waiting on a FIFO), or None."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > READ_LIMIT:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def write(directory: str, name: str, data: bytes, prefix: str, keep: int,
          proc: str = "/proc") -> None:
    """`name` in `directory` replaced by `data` (core.files.replace_in_dir), then the
    oldest files named `prefix`... beyond `keep` removed: one file per distinct key, so
    a long-lived host would otherwise grow it.  A cache that cannot be written costs the
    next start its hit, no more: errors are dropped."""
    from nvlaunch.core.files import replace_in_dir
    try:
        dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        replace_in_dir(dirfd, name, data, 0o600, proc=proc)
    except (OSError, ValueError):
        pass
    finally:
        os.close(dirfd)
    _prune(directory, prefix, keep)


def _prune(directory: str, prefix: str, keep: int) -> None:
    try:
        with os.scandir(directory) as it:
            files = [(e.stat(follow_symlinks=False).st_mtime_ns, e.path) for e in it
                     if e.name.startswith(prefix) and "." not in e.name]
    except OSError:
        return
    if len(files) <= keep:
        return
    files.sort()
    for _, path in files[:len(files) - keep]:
        try:
            os.unlink(path)
        except OSError:
            pass
