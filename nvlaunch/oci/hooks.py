"""How a hook runs nvlaunch: the one builder of the command line and environment that
every hook entry nvlaunch writes carries (config.json hooks from the runtime shim and
`setup runc`, hooks.d files, the CDI spec's createContainer hook, LXC's mount hook,
docker's and containerd's runtime entries).

`invocation(hook_path, gopts)` -> Invocation(path, argv, env):

- the program: `hook_path` (an option), else $NVLAUNCH_HOOK_PATH, else the nvlaunch
  script this process runs as, else `nvlaunch` on PATH, else this Python running the
  package (`python -I -S -c CODE`, CODE putting its directory on sys.path: a source
  tree or a `pip install --target` directory);
- nvlaunch's own script is run as `PYTHON -I -S SCRIPT` when its second line is SCRIPT_MARK
  (the script then puts site-packages on sys.path itself without running the import
  lines of .pth files: 12 ms instead of 55 per start on a GPU host's PyTorch
  virtualenv; installers drop options from a script's first line, so it cannot ask for
  -S there);
- but where that script is the one this process runs as, its Python runs the package
  this process imported directly, `PYTHON -I -S -c CODE` (package_command): the same
  program without what a script costs every container before nvlaunch's first line,
  about 3 ms here (Python probes a script path for a zip archive, compiles its 100
  lines, and the script looks for site-packages, which a hook never needs);
- the environment is complete, never inherited: a createContainer hook without `env`
  runs with the container's (CVE-2025-23266: LD_PRELOAD or PYTHONPATH from the image run
  as host root).  PATH, LANG, PYTHONSAFEPATH=1 and PYTHONDONTWRITEBYTECODE=1 always; the
  host roots given to the caller (global options or NVLAUNCH_*_ROOT) and its
  NVLAUNCH_DEBUG* / NVLAUNCH_NO_CGROUPS / NVLAUNCH_HOOK_TIMEOUT settings;
- Python runs isolated (-I): no PYTHON* variable and no directory of the caller's (a
  hook's cwd is the rootfs) reaches sys.path, whatever the environment holds;
- a hook that finds itself in an environment it was not given refuses to work
  (check_environment).
"""
from __future__ import annotations

import os
import sys

from nvlaunch.core.consts import DEFAULT_PATH
from nvlaunch.core.errors import UsageError
from nvlaunch.core.records import record
from nvlaunch.oci.state import process_env

ENV_HOOK_PATH = "NVLAUNCH_HOOK_PATH"
BASE_ENV = (f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8", "PYTHONSAFEPATH=1", "PYTHONDONTWRITEBYTECODE=1")
# Variables of the caller's own environment handed to the hook (never the container's).
PASSED_VARS = ("NVLAUNCH_DRIVER_ROOT", "NVLAUNCH_DEV_ROOT", "NVLAUNCH_PROC_ROOT",
               "NVLAUNCH_DEBUG", "NVLAUNCH_DEBUG_FILE", "NVLAUNCH_NO_CGROUPS",
               "NVLAUNCH_HOOK_TIMEOUT")
GOPT_VARS = {"driver_root": "NVLAUNCH_DRIVER_ROOT", "dev_root": "NVLAUNCH_DEV_ROOT",
             "proc_root": "NVLAUNCH_PROC_ROOT"}
# The second line of bin/nvlaunch: the script declares that `python -S` suits it.
SCRIPT_MARK = b"# nvlaunch-script: sets up sys.path itself under python -S"
HOOK_STAGES = ("prestart", "createRuntime", "createContainer")
# Variables that make the dynamic loader run code of someone else's choosing: no hook
# entry nvlaunch writes sets them, so a hook that has one runs in an environment it was
# not given (an entry without `env`: the container's, CVE-2025-23266) and refuses.
LOADER_VARS = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH")


@record
class Invocation:
    """What runs nvlaunch: execve(path, argv, env); argv ends before the subcommand."""
    path: str
    argv: tuple[str, ...]
    env: tuple[str, ...]

    def command(self, *args: str) -> list[str]:
        return list(self.argv) + list(args)


def invocation(hook_path: str | None = None, gopts: dict | None = None,
               environ=None) -> Invocation:
    environ = os.environ if environ is None else environ
    env = list(BASE_ENV) + _settings_env(gopts, environ)
    path = hook_path or environ.get(ENV_HOOK_PATH)
    if path:
        if not os.path.isabs(path):
            raise UsageError(f"hook path {path}: must be an absolute path")
        return Invocation(*_script_command(path), tuple(env))
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) == "nvlaunch" and os.path.isfile(script) \
            and os.access(script, os.X_OK):
        python = _script_python(script)
        if python is not None:
            return Invocation(*package_command(python), tuple(env))
        return Invocation(script, ("nvlaunch",), tuple(env))
    import shutil       # here: every hook imports this module (check_environment), and
    found = shutil.which("nvlaunch")   # shutil costs it ~10 ms (re, enum, fnmatch)
    if found:
        return Invocation(*_script_command(os.path.abspath(found)), tuple(env))
    return Invocation(*package_command(sys.executable or "/usr/bin/python3"), tuple(env))


# The cyclic garbage collector's first threshold in a hook or launch (bin/nvlaunch sets
# the same): a start allocates some 10,000 objects (the functions and classes of the
# modules it imports), none in cycles worth collecting, and at CPython's default of 700
# the collector ran a dozen times during a `run`: 1-2.5 ms of a `run` and 5 ms of a GPU
# hook (A/B on the 2-core VM).  It still runs, less often, for long commands (a pull).
GC_THRESHOLD = 50_000


def package_command(python: str) -> tuple[str, tuple[str, ...]]:
    """(executable, argv) running this nvlaunch package with `python`: -I, isolated (no
    PYTHON* variable, no cwd -- the rootfs -- and no user site on sys.path); -S, no
    site module (the hook needs nothing from site-packages, and .pth files can cost more
    than the hook itself); the package's parent directory put first on sys.path by the
    code itself, which then does what bin/nvlaunch does (cli.entry)."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import gc, sys; gc.set_threshold({GC_THRESHOLD}); sys.path.insert(0, {pkg_parent!r}); "
            "from nvlaunch.cli import entry; entry()")
    return python, (python, "-I", "-S", "-c", code)


def check_environment(environ, config: dict | None = None) -> None:
    """Refuse to work as a hook in an environment that is not the hook entry's own:
    one with a LOADER_VARS variable, or one holding the container's process.env (of
    `config`, config.json; the NVIDIA_* selection and the names every image and every
    entry may share, COMMON_VARS, left out): its NVLAUNCH_DRIVER_ROOT, say, would
    choose what is bound.  UsageError naming the variable."""
    for var in LOADER_VARS:
        if environ.get(var):
            raise UsageError(f"the hook's environment has {var} (from the container?): a hook "
                             "entry must carry its own `env`", hint=ENV_HINT)
    theirs = {k: v for k, v in (process_env(config) if isinstance(config, dict) else {}).items()
              if k not in COMMON_VARS and not k.startswith("NVIDIA_")}
    if theirs and all(environ.get(k) == v for k, v in theirs.items()):
        raise UsageError(f"the hook runs with the container's environment ({sorted(theirs)[0]}"
                         "=... from config.json): a hook entry must carry its own `env`",
                         hint=ENV_HINT)


COMMON_VARS = frozenset({"PATH", "HOME", "TERM", "HOSTNAME", "LANG", "LC_ALL", "container"})
def guard_hook(environ, check_env: bool = True) -> None:
    """What every hook does first (docs/security.md): bound its time and let signals end
    it through its error path (core.interrupt), leave the rootfs, which runc makes its
    cwd, and refuse an environment with loader variables (check_environment; not for
    LXC's hook, whose environment is LXC's and its config's, never an image's)."""
    from nvlaunch.core.interrupt import bound, timeout_from
    bound(timeout_from(environ))
    os.chdir("/")
    if check_env:
        check_environment(environ)


ENV_HINT = "write the entry with `nvlaunch setup`, or give it `env` (see docs/security.md)"


def _settings_env(gopts: dict | None, environ) -> list[str]:
    values = {var: environ[var] for var in PASSED_VARS if environ.get(var)}
    for key, var in GOPT_VARS.items():
        if gopts and gopts.get(key):
            values[var] = os.path.abspath(gopts[key])
    return [f"{k}={v}" for k, v in values.items()]


def _script_command(path: str) -> tuple[str, tuple[str, ...]]:
    """(executable, argv) of a hook that runs the nvlaunch program at `path`."""
    python = _script_python(path, plain=True)
    if python is None:
        return path, ("nvlaunch",)
    # argv[0] the full path: a virtualenv's python finds its pyvenv.cfg through it;
    # -I as above (the script finds its site-packages itself)
    return python, (python, "-I", "-S", path)


def _script_python(path: str, plain: bool = False) -> str | None:
    """The Python of nvlaunch's own script at `path` (SCRIPT_MARK on its second line, an
    absolute interpreter on its first, with options only where not `plain`), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).split(b"\n", 2)
    except OSError:
        return None
    words = head[0][2:].split() if head[0].startswith(b"#!") else []
    if len(head) > 1 and head[1].rstrip() == SCRIPT_MARK and words and words[0].startswith(b"/") \
            and (len(words) == 1 or not plain):
        return os.fsdecode(words[0])
    return None


# nvlaunch/_voidgate.c, built beside the package (setup.py build_ext): a hooks.d entry's
# program, which answers a container that asks for no GPU without starting Python.
VOID_GATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_voidgate")


def gated(inv: Invocation) -> Invocation:
    """`inv` behind the void gate, where the gate is built and `inv` is the package
    command (the one command the gate knows): `_voidgate PYTHON -I -S -c CODE hook STAGE`
    exits 0 where the hook would have nothing to do, and execs the rest otherwise."""
    if len(inv.argv) == 5 and inv.argv[1:4] == ("-I", "-S", "-c") and os.access(VOID_GATE, os.X_OK):
        return Invocation(VOID_GATE, (VOID_GATE,) + inv.argv, inv.env)
    return inv


def hook_entry(inv: Invocation, stage_arg: str = "prestart") -> dict:
    """A runtime-spec hook object ({path, args, env}) running `nvlaunch hook STAGE`."""
    return {"path": inv.path, "args": inv.command("hook", stage_arg), "env": list(inv.env)}


DOCKER_GPU_HOOK = "nvidia-container-runtime-hook"


def is_nvlaunch_hook(entry) -> bool:
    """An entry hook_entry() made: `nvlaunch hook ...`, or PYTHON [-I] -S .../nvlaunch hook ...
    (or the package form, PYTHON -I -S -c ... hook); or the prestart hook dockerd adds for
    `--gpus` (`nvidia-container-runtime-hook prestart`: `setup docker` installs nvlaunch
    under that name, and where it is NVIDIA's, that one injects): either injects the GPUs,
    so a second hook must not be added."""
    if not isinstance(entry, dict):
        return False
    path = entry.get("path")
    if isinstance(path, str) and os.path.basename(path) == DOCKER_GPU_HOOK:
        return True
    args = entry.get("args")
    if not isinstance(args, list):
        return False
    for i in range(1, min(len(args), 8)):
        if args[i] == "hook" and (os.path.basename(str(args[i - 1])) == "nvlaunch"
                                  or "nvlaunch.cli" in str(args[i - 1])):
            return True
    return False


def has_nvlaunch_hook(config: dict) -> bool:
    hooks = config.get("hooks")
    if not isinstance(hooks, dict):
        return False
    return any(is_nvlaunch_hook(e) for stage in HOOK_STAGES for e in (hooks.get(stage) or []))


def add_hook(config: dict, entry: dict, stage: str = "prestart") -> bool:
    """Append `entry` to config hooks[stage] unless an nvlaunch hook is there already;
    returns whether config changed."""
    if has_nvlaunch_hook(config):
        return False
    hooks = config.get("hooks")
    if hooks is None:
        hooks = config["hooks"] = {}
    if not isinstance(hooks, dict):
        raise UsageError("config.json: hooks is not an object")
    lst = hooks.get(stage)
    if lst is None:
        lst = hooks[stage] = []
    if not isinstance(lst, list):
        raise UsageError(f"config.json: hooks.{stage} is not a list")
    lst.append(entry)
    return True


def shell_line(inv: Invocation, *args: str) -> str:
    """The invocation as one /bin/sh command line (LXC runs hooks with sh -c)."""
    import shlex
    return shlex.join([inv.path] + list(inv.argv[1:]) + list(args))
