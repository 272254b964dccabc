"""Small host-file helpers shared by the front ends: atomic writes, JSON objects."""
from __future__ import annotations

import os

from nvlaunch.core import jsonread
from nvlaunch.core.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def write_atomic(path: str, data: str | bytes, mode: int | None = None) -> None:
    """Write `data` (str or bytes) to `path` through a temporary file in the same directory,
    fsync and rename(2): a reader (a runtime scanning its spec or hooks directory, a
    daemon reading its config) never sees half a file.  `mode` None keeps the mode of the
    file being replaced (0644 for a new one)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.nvlaunch-{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_json_object(path: str, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; UsageError naming the file otherwise.  With
    `missing_ok` (a config file setup is about to create) a missing or empty file is {}."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if missing_ok and not raw.strip():
            return {}
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
