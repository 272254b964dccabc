"""The OCI runtime's view of a container: its state JSON (on a hook's stdin) and its
bundle's config.json.  The one reader of both, for every hook nvlaunch has.

Only what a hook needs is read, and of the container's environment only the NVIDIA
selection variables (selection_env): nothing else of the container can reach a hook.
"""
from __future__ import annotations

import os
import stat

from nvlaunch.core import errors as E
from nvlaunch.core import jsonread


# The container variables the hook reads: nothing else of config.json's process.env.
SELECT_VARS = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_DISABLE_REQUIRE",
               "NVIDIA_IMEX_CHANNELS")
REQUIRE_PREFIX = "NVIDIA_REQUIRE_"


MAX_STATE = 1 << 20           # a state is a few hundred bytes; its annotations add some KB
MAX_CONFIG = 16 << 20         # config.json: a few KB, annotations and hooks included


def read_state(data: bytes | str) -> dict:
    """The OCI state JSON (runtime.md "State") -> dict; checks the fields the hook uses.
    More than MAX_STATE bytes is refused before anything is parsed."""
    if isinstance(data, str) and len(data) > MAX_STATE // 4:
        data = data.encode("utf-8", errors="surrogatepass")
    if len(data) > MAX_STATE:
        raise E.UsageError(f"OCI state on stdin: larger than {MAX_STATE >> 20} MiB "
                           f"({len(data)} bytes)")
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if not data.strip():
        raise E.UsageError("no OCI state JSON on stdin (run me as an OCI hook)")
    try:
        state = jsonread.loads(data)
    except ValueError as err:
        raise E.UsageError(f"OCI state on stdin is not JSON: {err}") from None
    if not isinstance(state, dict):
        raise E.UsageError("OCI state on stdin is not a JSON object")
    bundle = state.get("bundle") or state.get("bundlePath")   # bundlePath: pre-1.0 runtimes
    if not isinstance(bundle, str) or not bundle:
        raise E.UsageError("OCI state has no bundle")
    if not bundle.startswith("/"):
        # a hook's cwd may be the container's rootfs: never resolve against it
        raise E.UsageError(f"OCI state bundle {bundle!r} is not an absolute path")
    state["bundle"] = bundle
    return state


def load_config(bundle: str) -> dict:
    """The bundle's config.json as a dict; UsageError naming the file otherwise.

    Opened without blocking (O_NONBLOCK: a FIFO planted as config.json must not hang
    the runtime that waits for its hook) and refused unless a regular file of at most
    MAX_CONFIG bytes: a hook never reads /dev/zero or a FIFO to its end."""
    path = os.path.join(bundle, "config.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise E.UsageError(f"{path}: {err.strerror or err}", errno=err.errno) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise E.UsageError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG:
            raise E.UsageError(f"{path}: larger than {MAX_CONFIG >> 20} MiB")
        chunks, size = [], 0
        while size <= MAX_CONFIG:          # the file may grow between fstat and here
            chunk = os.read(fd, min(MAX_CONFIG + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise E.UsageError(f"{path}: {err.strerror or err}", errno=err.errno) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG:
        raise E.UsageError(f"{path}: larger than {MAX_CONFIG >> 20} MiB")
    try:
        config = jsonread.loads(b"".join(chunks))
    except ValueError as err:
        raise E.UsageError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise E.UsageError(f"{path}: not a JSON object")
    return config


def container_rootfs(state: dict, config: dict) -> str:
    """crun's state extension `root` (valid even where the bundle is not, e.g.
    --userns=nomap), else config root.path; either made absolute against the bundle."""
    root = state.get("root")
    if not isinstance(root, str) or not root:
        root = (config.get("root") or {}).get("path") if isinstance(config.get("root"), dict) else None
        if not isinstance(root, str) or not root:
            raise E.UsageError(f"{state['bundle']}/config.json has no root.path")
    if not os.path.isabs(root):          # crun passes root.path through as written
        root = os.path.join(state["bundle"], root)
    return os.path.normpath(root)


def process_env(config: dict) -> dict:
    """config.json process.env as a dict (a variable given twice: the last one wins, as
    in NVIDIA's hook); what is not a KEY=VALUE string is left out."""
    process = config.get("process")
    items = process.get("env") if isinstance(process, dict) else None
    out: dict = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, str):
            key, eq, value = item.partition("=")
            if eq:
                out[key] = value
    return out


def selection_env(config: dict) -> dict:
    """The NVIDIA selection variables of config.json process.env, and nothing else."""
    return {k: v for k, v in process_env(config).items()
            if k in SELECT_VARS or k.startswith(REQUIRE_PREFIX)}


def state_pid(state: dict) -> int:
    pid = state.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise E.UsageError(f"OCI state has no usable pid ({pid!r}); "
                           "prestart/create-runtime hooks need the container's pid")
    return pid


def rootfs_of_state(data: bytes | str) -> str:
    """The rootfs path of the container the state JSON `data` describes: crun's `root`
    where given (config.json is then not read), else config root.path."""
    state = read_state(data)
    root = state.get("root")
    config = {} if isinstance(root, str) and root else load_config(state["bundle"])
    return container_rootfs(state, config)
