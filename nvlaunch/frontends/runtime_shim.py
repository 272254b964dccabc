"""`nvlaunch runtime [RUNTIME-ARGS...]`: the thin OCI runtime shim (what
nvidia-container-runtime does in its "legacy" mode).

Called exactly like runc (by docker, containerd's runc shim, podman --runtime, or by
hand).  When the arguments hold the `create` or `run` command, the bundle's config.json
(`--bundle B` / `-b B` / `--bundle=B`, else the current directory, as runc does) gets the
nvlaunch prestart hook, unless it already has one; then the real runtime is exec'd with
the arguments unchanged.  Every other command (start, state, kill, delete, exec, ...) is
exec'd straight away.

- The hook is only added when the container asks for GPUs (NVIDIA_VISIBLE_DEVICES set and
  not void in process.env), so other containers do not pay for a hook process.
- The hook entry: path = the nvlaunch executable (NVLAUNCH_HOOK_PATH, else `nvlaunch` on
  PATH, else sys.argv[0] when that is an executable file), args
  ["nvlaunch", "hook", "prestart"], env = PATH plus those of NVLAUNCH_DRIVER_ROOT,
  NVLAUNCH_DEV_ROOT, NVLAUNCH_PROC_ROOT, NVLAUNCH_DEBUG, NVLAUNCH_DEBUG_FILE and
  NVLAUNCH_NO_CGROUPS that the shim itself has (or the global --*-root options).
- config.json is rewritten atomically (a temporary file in the bundle, renamed over it,
  same mode); every other key is kept as it was.
- The real runtime: `--runtime-path PATH` given first (before the runtime's own
  arguments), else NVLAUNCH_RUNTIME, else the first of runc, crun found on PATH.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from nvlaunch.core import errors as E

HOOK_ARGS = ["nvlaunch", "hook", "prestart"]
ENV_HOOK_PATH = "NVLAUNCH_HOOK_PATH"
ENV_RUNTIME = "NVLAUNCH_RUNTIME"
DEFAULT_RUNTIMES = ("runc", "crun")
# Variables of the shim's own environment handed to the hook (never the container's).
PASSED_VARS = ("NVLAUNCH_DRIVER_ROOT", "NVLAUNCH_DEV_ROOT", "NVLAUNCH_PROC_ROOT",
               "NVLAUNCH_DEBUG", "NVLAUNCH_DEBUG_FILE", "NVLAUNCH_NO_CGROUPS")
GOPT_VARS = {"driver_root": "NVLAUNCH_DRIVER_ROOT", "dev_root": "NVLAUNCH_DEV_ROOT",
             "proc_root": "NVLAUNCH_PROC_ROOT"}
HOOK_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Global options of runc and crun that take a value (as a separate argument unless
# written --opt=value); every other option before the command takes none.
GLOBAL_VALUE_OPTS = frozenset({"--log", "--log-format", "--root", "--criu", "--rootless",
                               "--cgroup-manager", "--log-level"})
BUNDLE_OPTS = ("--bundle", "-b")
CREATE_COMMANDS = ("create", "run")


def parse_runtime_args(args: list) -> tuple[str | None, str | None]:
    """(command, bundle) of runc-style arguments; bundle is None unless the command is
    create/run (then the given bundle, or the current directory)."""
    i = 0
    command = None
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            command = args[i] if i < len(args) else None
            break
        if arg.startswith("-"):
            if "=" not in arg and arg in GLOBAL_VALUE_OPTS:
                i += 1
            i += 1
            continue
        command = arg
        break
    if command not in CREATE_COMMANDS:
        return command, None
    bundle = None
    j = i + 1
    while j < len(args):
        arg = args[j]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in BUNDLE_OPTS:
            if eq:
                bundle = value
            elif j + 1 < len(args):
                bundle = args[j + 1]
                j += 1
        elif arg.startswith("-b") and len(arg) > 2 and not arg.startswith("--"):
            bundle = arg[2:]                 # -bDIR
        j += 1
    return command, os.path.abspath(bundle or os.getcwd())


def hook_path() -> str:
    """The absolute path of the executable the hook entry runs."""
    path = os.environ.get(ENV_HOOK_PATH)
    if path:
        if not os.path.isabs(path):
            raise E.UsageError(f"{ENV_HOOK_PATH}={path}: must be an absolute path")
        return path
    found = shutil.which("nvlaunch")
    if found:
        return os.path.abspath(found)
    argv0 = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 and not argv0.endswith(".py") and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        return argv0
    raise E.UsageError("cannot tell where the nvlaunch executable is: put it on PATH or set "
                       f"{ENV_HOOK_PATH}")


def hook_env(gopts: dict | None = None, environ=None) -> list:
    """The hook's environment: PATH and the shim's own NVLAUNCH_* settings."""
    environ = os.environ if environ is None else environ
    values = {var: environ[var] for var in PASSED_VARS if environ.get(var)}
    for key, var in GOPT_VARS.items():
        if gopts and gopts.get(key):
            values[var] = os.path.abspath(gopts[key])
    return [HOOK_PATH_ENV] + [f"{k}={v}" for k, v in values.items()]


def hook_command(path: str) -> tuple[str, list]:
    """(executable, argv before "hook") of a hook entry that runs the nvlaunch at `path`.

    When `path` is nvlaunch's own script (bin/nvlaunch) whose first line names its Python
    by absolute path and without options, the entry runs that Python with -S on it: the
    script then puts site-packages on sys.path itself, without running the import lines
    of .pth files.  On the GPU host's PyTorch virtualenv that made a start 12 ms instead
    of 55 (installers drop options from a script's first line, so the script cannot ask
    for -S itself).  Anything else runs as it is."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return path, ["nvlaunch"]
    words = head.split(b"\n", 1)[0][2:].split() if head.startswith(b"#!") else []
    if len(words) == 1 and words[0].startswith(b"/") and b"python" in words[0].rsplit(b"/", 1)[1] \
            and b"def _site_paths" in head:
        python = os.fsdecode(words[0])
        # argv[0] the full path: a virtualenv's python finds its pyvenv.cfg through it
        return python, [python, "-S", path]
    return path, ["nvlaunch"]


def hook_entry(path: str, env: list, stage_arg: str = "prestart") -> dict:
    exe, argv = hook_command(path)
    return {"path": exe, "args": argv + ["hook", stage_arg], "env": list(env)}


def is_nvlaunch_hook(entry, path: str | None = None) -> bool:
    """An entry hook_entry() made: `nvlaunch hook ...`, or PYTHON -S .../nvlaunch hook ..."""
    if not isinstance(entry, dict):
        return False
    args = entry.get("args") if isinstance(entry.get("args"), list) else []
    if path is not None and entry.get("path") == path and "hook" in args[1:2]:
        return True
    for i in (1, 3):
        if args[i:i + 1] == ["hook"] and os.path.basename(str(args[i - 1])) == "nvlaunch":
            return True
    return False


def has_nvlaunch_hook(config: dict) -> bool:
    hooks = config.get("hooks")
    if not isinstance(hooks, dict):
        return False
    return any(is_nvlaunch_hook(e) for stage in ("prestart", "createRuntime", "createContainer")
               for e in (hooks.get(stage) or []))


def wants_gpus(config: dict) -> bool:
    from nvlaunch.frontends.oci_hook import selection_env
    value = selection_env(config).get("NVIDIA_VISIBLE_DEVICES")
    return value is not None and value.strip() not in ("", "void")


def add_hook(config: dict, entry: dict, stage: str = "prestart") -> bool:
    """Append `entry` to config hooks[stage] unless an nvlaunch hook is there already;
    returns whether config changed."""
    if has_nvlaunch_hook(config):
        return False
    hooks = config.get("hooks")
    if hooks is None:
        hooks = config["hooks"] = {}
    if not isinstance(hooks, dict):
        raise E.UsageError("config.json: hooks is not an object")
    lst = hooks.get(stage)
    if lst is None:
        lst = hooks[stage] = []
    if not isinstance(lst, list):
        raise E.UsageError(f"config.json: hooks.{stage} is not a list")
    lst.append(entry)
    return True


def write_json_atomic(path: str, data, mode: int | None = None, indent: int | None = None) -> None:
    """JSON to `path`, atomically (files.write_atomic), keeping the file's mode."""
    from nvlaunch.core.files import write_atomic
    text = json.dumps(data, indent=indent) + ("\n" if indent is not None else "")
    write_atomic(path, text, mode)


def patch_bundle(bundle: str, entry: dict) -> bool:
    """Add the hook to `bundle`/config.json when the container wants GPUs; True if written."""
    from nvlaunch.core.files import load_json_object
    path = os.path.join(bundle, "config.json")
    config = load_json_object(path)
    if not wants_gpus(config) or not add_hook(config, entry):
        return False
    write_json_atomic(path, config)
    return True


def real_runtime(explicit: str | None = None) -> str:
    """The runtime to exec: --runtime-path, NVLAUNCH_RUNTIME, else runc or crun on PATH."""
    name = explicit or os.environ.get(ENV_RUNTIME)
    if name:
        return name
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else None
    for cand in DEFAULT_RUNTIMES:
        found = shutil.which(cand)
        if found and os.path.realpath(found) != me:
            return found
    raise E.UsageError("no OCI runtime found (runc, crun); set NVLAUNCH_RUNTIME")


def cmd_runtime(gopts: dict, args: list) -> int:
    explicit = None
    while args and (args[0] == "--runtime-path" or args[0].startswith("--runtime-path=")):
        if "=" in args[0]:
            explicit = args[0].partition("=")[2]
            args = args[1:]
        elif len(args) > 1:
            explicit, args = args[1], args[2:]
        else:
            raise E.UsageError("runtime: --runtime-path needs a value")
    command, bundle = parse_runtime_args(args)
    if bundle is not None:
        entry = hook_entry(hook_path(), hook_env(gopts))
        patch_bundle(bundle, entry)
    runtime = real_runtime(explicit)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(runtime, [runtime] + list(args))
    except OSError as err:
        raise E.ExecError(runtime, err) from None
    return 0   # not reached


__all__ = ["cmd_runtime", "parse_runtime_args", "patch_bundle", "add_hook", "hook_entry",
           "hook_env", "hook_path", "write_json_atomic", "has_nvlaunch_hook"]
