"""Where nvlaunch keeps what it remembers between starts (plans: plan.cache; merged ld
caches: plan.ldmemo): a directory only the caller can write, $XDG_RUNTIME_DIR/nvlaunch,
else /run/nvlaunch for root or /tmp/nvlaunch-UID, checked with lstat before each use
(a directory of the caller's, mode 0700); any doubt means no cache."""
from __future__ import annotations

import os
import stat

ENV_NO_CACHE = "NVLAUNCH_NO_CACHE"


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
