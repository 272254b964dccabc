"""`nvlaunch hook [STAGE]`: the OCI hook, one for every runtime (runc, crun, podman, CRI-O,
containerd, docker through `nvlaunch runtime`).

The runtime runs the hook with the container's state JSON on stdin (runtime-spec
runtime.md "State": id, pid, bundle, annotations; crun adds `root`, the rootfs path).
What the hook does, in this order:

1. Read the state, then `<bundle>/config.json`.  The rootfs is crun's `root` if given, else
   config `root.path` (relative to the bundle unless absolute).
2. Select from config `process.env` ONLY these variables: NVIDIA_VISIBLE_DEVICES,
   NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, NVIDIA_DISABLE_REQUIRE and
   NVIDIA_IMEX_CHANNELS (a variable given twice: the last one wins, as in NVIDIA's hook).
   Unset, empty or "void" NVIDIA_VISIBLE_DEVICES: exit 0 having done nothing.  Nothing
   else of the container (its other variables, LD_PRELOAD, PATH, NVLAUNCH_*, annotations,
   mounts) can influence the hook: the host roots and the switches come from the hook's
   own options and environment, i.e. from whoever installed the hook.
3. Build the plan (build.build_plan) while still in the host's namespaces.
4. Device cgroup: only as root in the initial user namespace (cgroup.needs_cgroup_rules())
   and unless NVLAUNCH_NO_CGROUPS=1 / --no-cgroups: allow "c MAJ:MIN rw" for each device
   node of the plan in the container's device cgroup (v1 devices.allow, or v2 eBPF).
   prestart/create-runtime find it from the state's pid (a host pid, from the runtime's
   pid namespace); create-container runs inside the container's cgroup and uses
   /proc/self.  A rootless runtime gets no cgroup writes (said once in debug output).
5. Inject: prestart and create-runtime run in the runtime's namespaces, so a forked child
   joins the container's user namespace when that differs from ours (and becomes its
   root there, as nsenter(1) does, see _become_root), then its mount namespace, applies
   the plan there (inject.py's in-root executor; on failure the mounts made so far are
   detached and the files created for them removed) and reports back
   over a pipe as JSON.  This process never leaves the host namespaces, so the cgroup
   undo and the error line happen here.  create-container already runs in the
   container's mount namespace (before pivot_root): inject directly.  If injection
   fails, the cgroup rules added in step 4 are removed again.

Every failure is one `nvlaunch: error: hook STAGE: container ID: ...` line on stderr and
a non-zero exit, so the runtime aborts the container.  Debug lines go to stderr only with
--debug or NVLAUNCH_DEBUG=1, and are appended to NVLAUNCH_DEBUG_FILE when that is set.

What the plan's `env` (NVIDIA_VISIBLE_DEVICES as UUIDs) asks for is NOT applied: at hook
time the runtime has already read process.env.  `nvlaunch runtime` does not rewrite it
either; the container keeps the value it was given.
"""
from __future__ import annotations

import os
import sys
import time

from nvlaunch.core import errors as E
from nvlaunch.core import jsonread

# Hook stage argument -> config.json hooks key.  poststart/poststop are accepted and do
# nothing, so a hooks.d file or a config listing the hook for them does not break.
STAGES = {
    "prestart": "prestart",
    "create-runtime": "createRuntime", "createRuntime": "createRuntime",
    "create-container": "createContainer", "createContainer": "createContainer",
}
NOOP_STAGES = ("poststart", "poststop", "start-container", "startContainer")
RUNTIME_NS_STAGES = ("prestart", "createRuntime")

# The container variables the hook reads: nothing else of config.json's process.env.
SELECT_VARS = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_DISABLE_REQUIRE",
               "NVIDIA_IMEX_CHANNELS")
REQUIRE_PREFIX = "NVIDIA_REQUIRE_"

ENV_DEBUG = "NVLAUNCH_DEBUG"
ENV_DEBUG_FILE = "NVLAUNCH_DEBUG_FILE"
ENV_NO_CGROUPS = "NVLAUNCH_NO_CGROUPS"
# Where namespaces and cgroups of processes are read: always the real /proc (the proc
# root of the contract is where the *driver's* /proc files are read, a fake host in tests).
PROC = "/proc"

HOOK_USAGE = """usage: nvlaunch hook [--no-cgroups] [STAGE]
  STAGE: prestart (default), create-runtime, create-container; the OCI state JSON on stdin.
  --no-cgroups   add no device cgroup rules (also NVLAUNCH_NO_CGROUPS=1)
"""
HOOK_OPTS = {"--no-cgroups": ("no_cgroups", False, False), "--help": ("help", False, False),
             "-h": ("help", False, False)}


class HookError(E.NvlaunchError):
    """A hook failure; keeps the exit code of the error it wraps."""

    def __init__(self, message: str, exit_code: int = E.EXIT_SETUP):
        super().__init__(message)
        self.exit_code = exit_code


class InjectError(HookError):
    """The injector child failed; its message, already formatted."""


class _Log:
    """Debug lines: stderr with --debug / NVLAUNCH_DEBUG=1, and NVLAUNCH_DEBUG_FILE."""

    def __init__(self, to_stderr: bool, path: str | None):
        self.to_stderr = to_stderr
        self.path = path
        self.t0 = time.monotonic()

    @property
    def on(self) -> bool:
        return self.to_stderr or bool(self.path)

    def __call__(self, msg: str, file_only: bool = False) -> None:
        if not self.on:
            return
        line = f"nvlaunch: hook[{os.getpid()}] +{(time.monotonic() - self.t0) * 1000:.1f}ms: {msg}\n"
        if self.to_stderr and not file_only:
            sys.stderr.write(line)
            sys.stderr.flush()
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line)
            except OSError:
                pass


# ---- reading the state and config.json -------------------------------------------

def read_state(data: bytes | str) -> dict:
    """The OCI state JSON (runtime.md "State") -> dict; checks the fields the hook uses."""
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
    state["bundle"] = bundle
    return state


def load_config(bundle: str) -> dict:
    from nvlaunch.core.files import load_json_object
    return load_json_object(os.path.join(bundle, "config.json"))


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


def selection_env(config: dict) -> dict:
    """The NVIDIA selection variables of config.json process.env, and nothing else."""
    process = config.get("process")
    items = process.get("env") if isinstance(process, dict) else None
    out: dict = {}
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, str):
            continue
        key, eq, value = item.partition("=")
        if eq and (key in SELECT_VARS or key.startswith(REQUIRE_PREFIX)):
            out[key] = value
    return out


def _truthy(val: str | None) -> bool:
    return (val or "").strip().lower() in ("1", "true", "yes", "on")


# ---- the command ------------------------------------------------------------------

def cmd_hook(gopts: dict, args: list) -> int:
    from nvlaunch.cli.main import parse_command
    parsed = parse_command(args, HOOK_OPTS, "hook", HOOK_USAGE, max_positional=1)
    if parsed is None:
        return 0
    opts, rest = parsed
    stage_arg = rest[0] if rest else "prestart"
    if stage_arg in NOOP_STAGES:
        return 0
    stage = STAGES.get(stage_arg)
    if stage is None:
        raise E.UsageError(f"hook: unknown stage {stage_arg!r} "
                           "(expected prestart, create-runtime or create-container)")
    log = _Log(bool(gopts.get("debug")) or _truthy(os.environ.get(ENV_DEBUG)),
               os.environ.get(ENV_DEBUG_FILE) or None)
    no_cgroups = bool(opts.get("no_cgroups")) or _truthy(os.environ.get(ENV_NO_CGROUPS))
    state = read_state(sys.stdin.buffer.read())
    cid = str(state.get("id") or "?")
    try:
        return run_hook(gopts, stage, state, log, no_cgroups)
    except E.NvlaunchError as err:
        failure = HookError(f"hook {stage_arg}: container {cid}: {err}", err.exit_code)
        cause: BaseException = err
    except OSError as err:
        msg = f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}"
        failure, cause = HookError(f"hook {stage_arg}: container {cid}: {msg}"), err
    # the runtime may not show our stderr (crun drops it by default): keep it in the file too
    log(f"error: {failure}", file_only=True)
    raise failure from cause


def run_hook(gopts: dict, stage: str, state: dict, log, no_cgroups: bool = False) -> int:
    """The hook for one container; `stage` is a config.json hooks key."""
    from nvlaunch.plan.request import Request
    config = load_config(state["bundle"])
    env = selection_env(config)
    req = Request.from_env(env)
    log(f"stage {stage}, container {state.get('id')}, pid {state.get('pid')}, "
        f"NVIDIA_VISIBLE_DEVICES={env.get('NVIDIA_VISIBLE_DEVICES')!r}")
    if req.void:
        log("NVIDIA_VISIBLE_DEVICES unset, empty or void: nothing to do")
        return 0
    rootfs = container_rootfs(state, config)
    from nvlaunch.cli.main import _host
    from nvlaunch.plan.cache import plan_for_rootfs
    host = _host(gopts)
    plan = plan_for_rootfs(req, host, rootfs)[0]
    log(f"plan: {len(plan.entries)} entries, {len(plan.devices)} device nodes, "
        f"libdir {plan.libdir}, rootfs {rootfs}")
    if plan.empty:
        return 0

    ns = None
    if stage in RUNTIME_NS_STAGES:
        ns = _open_namespaces(state)      # before any change, so a bad pid fails first

    undo = None
    try:
        undo = _cgroup_step(stage, state, plan, log, no_cgroups)
        if ns is not None:
            created = _inject_in_child(plan, rootfs, ns, log)
        else:
            from nvlaunch.exec.inject import inject
            created = len(inject(plan, rootfs).created)
        log(f"injected; {created} new paths in the rootfs")
    except BaseException:
        if undo is not None:
            try:
                undo.undo()
                log("cgroup rules removed again")
            except E.NvlaunchError as err:
                log(f"cgroup undo failed: {err}")
        raise
    finally:
        if ns is not None:
            ns.close()
    if undo is not None:
        undo.close()
    return 0


# ---- namespaces ---------------------------------------------------------------------

class _Namespaces:
    """fds of the container's user (None when it is ours) and mount namespaces."""

    def __init__(self, user_fd: int | None, mnt_fd: int, pid: int):
        self.user_fd, self.mnt_fd, self.pid = user_fd, mnt_fd, pid

    def close(self) -> None:
        for fd in (self.user_fd, self.mnt_fd):
            if fd is not None:
                os.close(fd)
        self.user_fd = self.mnt_fd = None


def _state_pid(state: dict) -> int:
    pid = state.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise E.UsageError(f"OCI state has no usable pid ({pid!r}); "
                           "prestart/create-runtime hooks need the container's pid")
    return pid


def _open_namespaces(state: dict) -> _Namespaces:
    pid = _state_pid(state)
    paths = {n: f"{PROC}/{pid}/ns/{n}" for n in ("user", "mnt")}
    fds: dict = {}
    try:
        for name, path in paths.items():
            try:
                fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                raise E.NamespaceError(f"open {path}: {err.strerror} (did the container exit?)") from None
        same = {}
        for name in ("user", "mnt"):
            mine, theirs = os.stat(f"{PROC}/self/ns/{name}"), os.fstat(fds[name])
            same[name] = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
        if same["mnt"]:
            raise E.NamespaceError(f"container pid {pid} shares the runtime's mount namespace; "
                                   "refusing to mount into it")
        if same["user"]:
            os.close(fds.pop("user"))
        return _Namespaces(fds.get("user"), fds["mnt"], pid)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise


def _become_root() -> None:
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


def _inject_in_child(plan, rootfs: str, ns: _Namespaces, log) -> int:
    """fork; the child joins the namespaces, injects, and reports over a pipe: "OK <n>"
    (n paths created) or an error record (errors.pack_error)."""
    from nvlaunch.core.consts import CLONE_NEWNS, CLONE_NEWUSER
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:            # child: never returns
        os.close(r)
        try:
            from nvlaunch.exec.inject import inject
            from nvlaunch.kernel.real import REAL
            if ns.user_fd is not None:
                REAL.setns(ns.user_fd, CLONE_NEWUSER, f"{PROC}/{ns.pid}/ns/user")
                _become_root()
            REAL.setns(ns.mnt_fd, CLONE_NEWNS, f"{PROC}/{ns.pid}/ns/mnt")
            data = b"OK %d" % len(inject(plan, rootfs, REAL).created)
        except BaseException as exc:    # noqa: BLE001 - everything goes to the parent
            data = E.pack_error(exc, trace=True)
        try:
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    log(f"injector child {pid} done ({'user+mnt' if ns.user_fd is not None else 'mnt'} namespace)")
    report = b"".join(chunks)
    if report.startswith(b"OK "):
        return int(report[3:])
    if not report:
        if os.WIFSIGNALED(status):
            raise E.NamespaceError(f"injector process killed by signal {os.WTERMSIG(status)}")
        raise E.NamespaceError(f"injector process exited with status "
                               f"{os.waitstatus_to_exitcode(status)} and no report")
    err, trace = E.unpack_error(report)
    if trace:
        log("injector traceback:\n" + trace.rstrip())
    raise InjectError(str(err), err.exit_code)


# ---- cgroup -------------------------------------------------------------------------

def _cgroup_step(stage: str, state: dict, plan, log, no_cgroups: bool):
    """Allow the plan's device nodes in the container's device cgroup; returns the Undo
    or None when nothing was (or could be) done."""
    from nvlaunch.plan.devices import rules_for_nodes
    rules = rules_for_nodes(plan.devices)
    if not rules:
        return None
    if no_cgroups:
        log("cgroup: --no-cgroups / NVLAUNCH_NO_CGROUPS: no device rules added")
        return None
    from nvlaunch.exec import cgroup
    from nvlaunch.exec.cgroup import allow_devices, find_cgroup, needs_cgroup_rules
    cgroup.log.sink = log if log.on else None     # its lines into the hook's debug file too
    if not needs_cgroup_rules("/"):
        log("cgroup: not root in the initial user namespace (rootless runtime): no device "
            "cgroup writes; device access is what the runtime's own policy allows")
        return None
    pid = _state_pid(state) if stage in RUNTIME_NS_STAGES else "self"
    target = find_cgroup(pid, "/", "self")
    undo = allow_devices(target, rules)
    log(f"cgroup v{target.version} {target.path}: allowed "
        + ", ".join(r.to_v1_line() for r in rules))
    return undo


__all__ = ["cmd_hook", "run_hook", "read_state", "load_config", "container_rootfs",
           "selection_env", "HookError"]
