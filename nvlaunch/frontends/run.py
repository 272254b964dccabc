"""`nvlaunch run`: options -> a RunConfig (exec.launch) with the GPU plan (plan.cache)."""
from __future__ import annotations

import os
import stat
import sys
import time

from nvlaunch.core.argv import int_opt, parse_opts
from nvlaunch.core.errors import EXIT_SETUP, NvlaunchError, UsageError, quote
from nvlaunch.core.log import log
from nvlaunch.exec.launch import run
from nvlaunch.exec.runroot import RunConfig, UserBind
from nvlaunch.plan.records import Plan

# Imported where used (timings, --dry-run, a GPU request): each module on the way to a
# container costs about 0.1-0.3 ms, and `run --no-gpu` needs none of these.

RUN_USAGE = """usage: nvlaunch run [OPTIONS] ROOTFS CMD [ARG...]
       nvlaunch run [OPTIONS] --bundle DIR [CMD [ARG...]]
  --gpus SPEC            all, none, void, indices, UUIDs (or unique prefixes), PCI bus ids, MIG
                         ids; docker's device=LIST and count=N too
  --capabilities CAPS    compute,utility,video,graphics,display,compat32,ngx or all
  --no-gpu               inject nothing GPU-related
  -e, --env K=V | K      set a variable in the container (K alone: the caller's value; repeatable)
  --env-file FILE        variables from FILE (docker's format: K=V or K lines, # comments)
  -v, --bind SRC:DST[:ro|:rw]
                         bind a host path into the container (repeatable)
  -w, --workdir DIR      working directory inside (default /, or the bundle's cwd)
  --hostname NAME        host name inside
  --net host|none        network namespace: the host's (default) or a new one with lo up
  --uid N, --gid N       ids inside the container (default 0)
  --readonly             the rootfs is read-only inside
  --overlay DIR          the container's writes persist in DIR (the rootfs stays untouched)
  --tmpfs-size SIZE      the writable layer's limit without --overlay (default 1g; N[kmg] or N%)
  --bundle DIR           an OCI bundle: config.json's root, process args, env, cwd and user
  --privileged           as root: keep every capability, /proc and /sys unmasked, device
                         nodes of the rootfs usable, no no_new_privs (docs/security.md)
  --dry-run              check everything, print the plan, binds and environment, and exit
  --timings              print per-phase timings on stderr
  --                     ends the options
"""

RUN_OPTS = {
    "--gpus": ("gpus", True, False), "--capabilities": ("capabilities", True, False),
    "--env": ("env", True, True), "-e": ("env", True, True), "--env-file": ("env_file", True, True),
    "--bind": ("bind", True, True), "-v": ("bind", True, True), "--volume": ("bind", True, True),
    "--workdir": ("workdir", True, False), "-w": ("workdir", True, False),
    "--hostname": ("hostname", True, False), "--net": ("net", True, False),
    "--uid": ("uid", True, False), "--gid": ("gid", True, False),
    "--readonly": ("readonly", False, False), "--privileged": ("privileged", False, False),
    "--overlay": ("overlay", True, False), "--tmpfs-size": ("tmpfs_size", True, False),
    "--bundle": ("bundle", True, False),
    "--no-gpu": ("no_gpu", False, False),
    "--dry-run": ("dry_run", False, False), "--timings": ("timings", False, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}
DEFAULT_TMPFS_SIZE = "1g"


def cmd_run(gopts: dict, args: list) -> int:
    opts, rest = parse_opts(args, RUN_OPTS, "run")
    if opts.get("help"):
        sys.stdout.write(RUN_USAGE)
        return 0
    log.configure(bool(gopts.get("debug")), "run")
    bundle = _bundle(opts["bundle"]) if opts.get("bundle") else None
    image = None
    if bundle is not None:
        rootfs_arg, argv = bundle["rootfs"], tuple(rest) or bundle["args"]
        if not argv:
            raise UsageError(f"--bundle {opts['bundle']}: config.json has no process.args; give CMD")
    elif rest and ":" in rest[0] and not os.path.isdir(rest[0]) and _is_image(rest[0]):
        from nvlaunch.image import resolve      # an image reference (docs/images.md)
        image = resolve(rest[0])
        rootfs_arg, argv = image.rootfs, tuple(rest[1:])
    else:
        if len(rest) < 2:
            raise UsageError("run: need ROOTFS and CMD (see `nvlaunch run --help`)")
        rootfs_arg, argv = rest[0], tuple(rest[1:])
    if not rootfs_arg:
        raise UsageError("run: the rootfs argument is empty")
    rootfs = _host_dir(rootfs_arg, "rootfs")
    env = list(bundle["env"]) if bundle else []
    given: list[tuple[str, str]] = []
    for path in opts.get("env_file", []):
        given.extend(_env_file(path))
    for item in opts.get("env", []):
        given.extend(_env_item(item, "--env"))
    env += given
    binds = [_bind(item) for item in opts.get("bind", [])]
    net = opts.get("net", "host")
    if net not in ("host", "none"):
        raise UsageError(f"--net {net}: expected host or none")
    workdir = opts.get("workdir", bundle["cwd"] if bundle else "/")
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir {workdir}: must be an absolute path")
    uid = int_opt(opts, "uid", "--uid") if "uid" in opts else (bundle["uid"] if bundle else 0)
    gid = int_opt(opts, "gid", "--gid") if "gid" in opts else (bundle["gid"] if bundle else 0)
    if image is not None:       # the image's config as docker applies it; the options win
        from nvlaunch.image.config import apply_config
        args, env, workdir, uid, gid = apply_config(
            image, list(argv), env, opts.get("workdir"), uid if "uid" in opts else None,
            gid if "gid" in opts else None, {k for k, _ in given})
        argv = tuple(args)
    overlay = os.path.realpath(opts["overlay"]) if opts.get("overlay") else None
    if overlay and opts.get("readonly"):
        raise UsageError("--overlay and --readonly: the one keeps writes, the other refuses them")
    tmpfs_size = _size(opts.get("tmpfs_size", DEFAULT_TMPFS_SIZE))
    timings = None
    if opts.get("timings") or os.environ.get("NVLAUNCH_TIMINGS") == "1":
        from nvlaunch.core.timings import Timings
        timings = Timings(gopts.get("t_main") or time.monotonic_ns())
    plan, cache_key, allocated = _run_plan(gopts, opts, dict(env), rootfs)
    if allocated is not None:   # CUDA_VISIBLE_DEVICES & co. count the container's GPUs
        from nvlaunch.plan.selection import renumbered_env
        env = renumbered_env(env, allocated)
    hostname = opts.get("hostname")
    cfg = RunConfig(rootfs=rootfs, argv=argv, env=tuple(env), binds=tuple(binds), workdir=workdir,
                    hostname=hostname, net=net, uid=uid, gid=gid,
                    readonly=bool(opts.get("readonly")), plan=plan, debug=bool(gopts.get("debug")),
                    privileged=bool(opts.get("privileged")), overlay=overlay, tmpfs_size=tmpfs_size,
                    defaults=user_defaults(rootfs, uid),
                    etc_files=_etc_files(net, hostname or os.uname().nodename),
                    memo_dir=_memo_dir(plan))
    if opts.get("dry_run"):
        from nvlaunch.render.plan_text import print_plan, print_run
        print_plan(plan, sys.stdout)
        print_run(cfg, sys.stdout)
        return 0
    if overlay:            # made only now: a refused or dry run leaves nothing behind
        _make_overlay(overlay, opts["overlay"])
    log(f"rootfs {rootfs}, command {list(argv)!r}, uid {uid} gid {gid}, net {net}, "
        f"{len(plan.entries)} plan entries, {len(binds)} binds, env {sorted(k for k, _ in env)}, "
        + (f"overlay {overlay}" if overlay else f"tmpfs layer {tmpfs_size}"))
    try:
        return run(cfg, timings=timings)
    except NvlaunchError as err:
        if cache_key and err.exit_code == EXIT_SETUP:   # never trust a plan that failed
            from nvlaunch.plan import cache as plancache
            plancache.drop(cache_key)
        raise


# ---- host paths: resolved on the host as a shell resolves them --------------------------

def _host_dir(path: str, what: str) -> str:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as err:
        raise UsageError(f"{what} {quote(path)}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {quote(path)}: not a directory")
    return real


def _bind(item: str) -> UserBind:
    parts = item.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/") \
            or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise UsageError(f"--bind {quote(item)}: expected SRC:DST[:ro|:rw] with an absolute DST")
    src = os.path.realpath(parts[0])
    if not os.path.exists(src):
        raise UsageError(f"--bind {quote(item)}: {quote(parts[0])}: no such file or directory")
    return UserBind(src, os.path.normpath(parts[1]), len(parts) == 3 and parts[2] == "ro")


def _make_overlay(real: str, given: str) -> None:
    """--overlay DIR: DIR/upper holds the container's writes, DIR/work is overlayfs's."""
    try:
        os.makedirs(real, 0o755, exist_ok=True)
        for sub in ("upper", "work"):
            os.makedirs(os.path.join(real, sub), 0o755, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--overlay {quote(given)}: {err.strerror}") from None


def _size(raw: str) -> str:
    """A tmpfs size= value: digits with k, m or g, or a percentage of memory."""
    body = raw[:-1] if raw[-1:] in ("k", "m", "g", "K", "M", "G", "%") else raw
    if not body or not (body.isascii() and body.isdigit()) or len(body) > 12 or int(body) == 0:
        raise UsageError(f"--tmpfs-size {quote(raw)}: expected N, Nk, Nm, Ng or N%")
    return raw.lower()


# ---- the environment ---------------------------------------------------------------------

def _env_item(item: str, where: str) -> list[tuple[str, str]]:
    """K=V, or K alone for the caller's value (nothing if the caller has none, as docker)."""
    key, eq, value = item.partition("=")
    if not key or "\0" in item or (not eq and ("=" in key)):
        raise UsageError(f"{where} {quote(item)}: expected KEY=VALUE or KEY")
    if eq:
        return [(key, value)]
    if key in os.environ:
        return [(key, os.environ[key])]
    return []


def _env_file(path: str) -> list[tuple[str, str]]:
    """docker's --env-file: one K=V or K per line; blank lines and # comments skipped;
    no quotes are removed and nothing is expanded."""
    try:
        with open(os.path.realpath(path), "rb") as f:
            raw = f.read((1 << 20) + 1)
    except OSError as err:
        raise UsageError(f"--env-file {quote(path)}: {err.strerror}") from None
    if len(raw) > 1 << 20:
        raise UsageError(f"--env-file {quote(path)}: larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--env-file {quote(path)}: not UTF-8") from None
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        out.extend(_env_item(line, f"--env-file {quote(path)} line {n}:"))
    return out


def user_defaults(rootfs: str, uid: int) -> tuple[tuple[str, str], ...]:
    """HOME and USER for `uid` from the rootfs's /etc/passwd (read inside it; an
    unreadable or odd one is ignored), else HOME=/root for 0 and / for others."""
    from nvlaunch.host.container import passwd_entry
    entry = passwd_entry(rootfs, uid)
    if entry:
        name, home = entry
        return (("HOME", home or "/"), ("USER", name))
    return (("HOME", "/root" if uid == 0 else "/"),) + ((("USER", "root"),) if uid == 0 else ())


def _etc_files(net: str, hostname: str) -> tuple[tuple[str, bytes], ...]:
    """/etc/resolv.conf and /etc/hosts as the host has them with --net host (the host's
    network: its resolvers work), as podman and Apptainer do; /etc/hostname always."""
    files = [("/etc/hostname", (hostname + "\n").encode())]
    if net == "host":
        for path in ("/etc/resolv.conf", "/etc/hosts"):
            try:
                with open(path, "rb") as f:
                    files.append((path, f.read(1 << 20)))
            except OSError:
                continue
    else:
        files.append(("/etc/hosts", f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost\n".encode()))
    return tuple(files)


def _bundle(path: str) -> dict:
    """What `--bundle DIR` gives run: config.json's root.path (relative to DIR), process
    args, env, cwd and user.uid/gid (oci.state.load_config reads it, bounded)."""
    from nvlaunch.oci.state import load_config
    bdir = _host_dir(path, "--bundle")
    config = load_config(bdir)
    root = config.get("root")
    rpath = root.get("path") if isinstance(root, dict) else None
    if not isinstance(rpath, str) or not rpath:
        raise UsageError(f"--bundle {quote(path)}: config.json has no root.path")
    proc = config.get("process")
    proc = proc if isinstance(proc, dict) else {}
    args = proc.get("args") or []
    env_items = proc.get("env") or []
    user = proc.get("user")
    user = user if isinstance(user, dict) else {}
    cwd = proc.get("cwd") or "/"
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)) \
            or not (isinstance(env_items, list) and all(isinstance(e, str) for e in env_items)) \
            or not isinstance(cwd, str):
        raise UsageError(f"--bundle {quote(path)}: config.json process.args/env/cwd are not strings")
    ids = []
    for key in ("uid", "gid"):
        v = user.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4294967294:
            raise UsageError(f"--bundle {quote(path)}: config.json process.user.{key} is not an id")
        ids.append(v)
    env = [(k, v) for k, eq, v in (e.partition("=") for e in env_items) if eq and k]
    return {"rootfs": os.path.join(bdir, rpath), "args": tuple(args), "env": env, "cwd": cwd,
            "uid": ids[0], "gid": ids[1]}


def _memo_dir(plan: Plan) -> str | None:
    """Where PID 1 remembers the merged ld.so.cache (plan.ldmemo), for a plan that has one."""
    if not plan.ldcache:
        return None
    from nvlaunch.plan.cachedir import cache_dir
    return cache_dir()


def _is_image(arg: str) -> bool:
    from nvlaunch.image.reference import is_reference    # only for an argument with a ':'
    return is_reference(arg)


def _docker_gpus(spec: str) -> str:
    """docker's --gpus forms: `device=LIST` (quoted as the docker CLI takes it, too) is
    LIST, `count=N` the first N GPUs, `count=all` all; anything else as it is."""
    spec = spec.strip()
    if len(spec) > 1 and spec[0] == spec[-1] and spec[0] in "'\"":
        spec = spec[1:-1]
    key, eq, value = spec.partition("=")
    if eq and key == "device":
        return value
    if eq and key == "count":
        if value == "all":
            return "all"
        if not (value.isascii() and value.isdigit()) or len(value) > 4 or int(value) == 0:
            raise UsageError(f"--gpus {quote(spec)}: count must be a number of GPUs or all")
        return ",".join(str(i) for i in range(int(value)))
    return spec


def _run_plan(gopts: dict, opts: dict, env: dict, rootfs: str):
    """The GPU part of `run`: --gpus wins, else NVIDIA_VISIBLE_DEVICES from --env.
    Inside a scheduler's allocation (a Slurm step, a device cgroup) the spec counts the
    allocation's GPUs (plan.selection.allocated_spec).  Returns (plan, cache key or None,
    inside an allocation the GPUs selected from it, in host terms, else None); a plan
    cached by an earlier launch is reused while what it was built from is unchanged
    (plan.cache)."""
    if opts.get("no_gpu"):
        return Plan(), None, None
    spec = opts.get("gpus", env.get("NVIDIA_VISIBLE_DEVICES"))
    if spec is None or spec.strip() in ("", "void"):
        return Plan(), None, None
    spec = _docker_gpus(spec)
    from nvlaunch.host.allocation import unrestricted
    from nvlaunch.host.view import HostView
    from nvlaunch.plan import cache as plancache
    from nvlaunch.plan.request import Request
    host = HostView.from_options(gopts)
    allocated = None
    if not unrestricted(host):      # (the selection modules only where it may matter)
        from nvlaunch.plan.selection import allocated_spec
        allocated = allocated_spec(spec, host)
    if allocated is not None:
        spec = allocated
    caps = opts.get("capabilities", env.get("NVIDIA_DRIVER_CAPABILITIES"))
    req = Request(gpus=spec, capabilities=caps,
                  env=tuple(sorted((k, v) for k, v in env.items() if k.startswith("NVIDIA_"))))
    plan, key = plancache.plan_for_rootfs(req, host, rootfs)
    return plan, key, allocated
