#!/usr/bin/env python3
"""Container setup latency: nvlaunch against bubblewrap, unshare, runc and crun, in one run.

    .venv/bin/python benchmarks/latency.py            # full: 31 runs per variant (~6 min)
    .venv/bin/python benchmarks/latency.py --quick    # CI: 7 runs per variant (~2-3 min)

Every variant starts a container on the same busybox rootfs (tests/fakehost.build_rootfs)
and the same fake NVIDIA driver tree (tests/fakehost.build_fake_host), runs /bin/true in
it and exits; one sample is time.monotonic_ns() around subprocess.run(), from before the
fork to after the launcher is reaped (output discarded).  Variants are INTERLEAVED
(A B C A B C ...) after warm-up rounds, so drift of the machine hits all of them alike.

Variants (as root, and the rootless ones again as --user, default `nvltest` if it exists,
switched with setpriv; the `setpriv /bin/true` row is that switch's own cost):
  nvlaunch run --gpus all --capabilities all (1 GPU, 8 GPUs), nvlaunch run --no-gpu;
  bwrap with exactly the binds of nvlaunch's plan (from `nvlaunch list --json`), and bare;
  unshare --user --map-root-user --mount --pid --fork chroot ROOTFS /bin/true;
  runc run (no hook; prestart hook `nvlaunch hook prestart`), crun likewise;
  interpreter baselines (python -c pass, -I -S, import nvlaunch.cli) and fork+exec of /bin/true;
  issue 15 (peer_variants): the HEADLINE row, `nvlaunch run --gpus all` with the default
  capabilities as the user, against bwrap with the same binds; 16 GPUs; OCI lifecycles
  (create, start, wait, delete) of plain runc, runc + the prestart entry `nvlaunch setup runc`
  writes (oci.hooks.invocation/hook_entry) and NVIDIA's nvidia-container-runtime in CDI mode
  (from the anchors tarball, NVLAUNCH_BENCH_NVCT overrides; skipped with a note without it);
  the same with a rootfs whose ld.so.cache has 9, 500 and 5,000 entries, and `nvlaunch run`
  on those rootfs; rootful podman (private --root/--runroot) plain and with
  `--device nvidia.com/gpu=all` from `nvlaunch cdi generate`.
Then: nvlaunch's per-phase times (its `nvlaunch-timings:` line, NVLAUNCH_T0_NS set so that
"startup" = interpreter start + imports), a split of "prepare" (imports vs discovery+plan),
the top imports (-X importtime), scaling with GPUs (1, 2, 4, 8, 16) and capabilities,
32 launches started at once, and parsing a 1,000-entry ld.so.cache in process.

Results: a Markdown table on stdout (and --md-out), everything in --json-out.
Timings are never asserted: a variant that cannot run here is "unavailable", exit 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.fakehost import build_fake_host, build_rootfs  # noqa: E402

VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
PY = VENV_PY if os.access(VENV_PY, os.X_OK) else sys.executable
CONSOLE_SCRIPT = os.path.join(REPO, ".venv", "bin", "nvlaunch")
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
DEFAULT_MD = os.path.join(HERE, "results", "latest.md")
DEFAULT_USER = "nvltest"
RUN_TIMEOUT = 60
TIMINGS_PREFIX = "nvlaunch-timings:"
PHASES = ("startup", "prepare", "namespaces", "mounts", "init")
AFTER = "after init (exec, exit, reap)"


def canonical_phases(raw: dict, total_ms: float) -> dict:
    """The five phases of the brief from one timings line: sub-phases that a newer nvlaunch
    reports between "namespaces" and "init" (staging, layer, binds, ...) add up to "mounts";
    AFTER is what the line does not cover (fork+exec of the command, exit, teardown, reaping,
    and the launcher's own exit)."""
    out = {k: raw[k] for k in ("startup", "prepare", "namespaces", "init") if k in raw}
    others = [v for k, v in raw.items() if k not in out]
    if others:
        out["mounts"] = sum(others)
    out[AFTER] = total_ms - sum(raw.values())
    out["total"] = total_ms
    return out


# ---------------------------------------------------------------------------------- helpers

def ms(ns: int) -> float:
    return ns / 1e6


def p90(values: list) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def med(values: list):
    return statistics.median(values) if values else None


def r3(x):
    return None if x is None else round(x, 3)


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


def first_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def nvlaunch_cmd() -> tuple[list, str]:
    """What a user runs: the console script when installed, else `python -m nvlaunch`."""
    if os.access(CONSOLE_SCRIPT, os.X_OK):
        return [CONSOLE_SCRIPT], CONSOLE_SCRIPT
    return [PY, "-m", "nvlaunch"], f"{PY} -m nvlaunch"


def _fstype(path: str) -> str | None:
    """The file system type of the mount at exactly `path`, from mountinfo."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if left.split()[4] == path and right:
                    kind = right.split()[0]
        return kind
    except (OSError, IndexError, UnboundLocalError):
        return None


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(cmd):
        try:
            lines = sh(cmd).stdout.strip().splitlines()
        except OSError:
            return None
        return lines[0].strip() if lines else None
    fstypes = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if " - " in line:
                    fstypes.add(line.split(" - ")[1].split()[0])
    except OSError:
        pass
    cgroup = ("hybrid (v1 + v2)" if {"cgroup", "cgroup2"} <= fstypes else
              "v2" if "cgroup2" in fstypes else "v1" if "cgroup" in fstypes else "none")
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
        "os": _os_release(), "python": f"{platform.python_version()} ({PY})",
        "bwrap": version(["bwrap", "--version"]), "runc": version(["runc", "--version"]),
        "crun": version(["crun", "--version"]), "unshare": version(["unshare", "--version"]),
        "cgroup": cgroup, "euid": os.geteuid(), "tree": _tree_state(),
    }


def _tree_state() -> str | None:
    """The commit the measured nvlaunch came from (read-only git queries)."""
    try:
        head = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "--",
                    "nvlaunch"]).stdout.strip()
    except OSError:
        return None
    return (head + (" + uncommitted changes in nvlaunch/" if dirty else "")) if head else None


def _os_release() -> str | None:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------- variants

class Variant:
    """One way of starting the container.  `argv(i)` gives the command of run i."""

    def __init__(self, key, label, argv, env=None, group="root", kind="other", bwrap_ref=None,
                 timings=False, preexec=None, note="", before=None, after=None):
        self.key, self.label, self.group, self.kind = key, label, group, kind
        self._argv = argv
        self.env = env or {}
        self.bwrap_ref = bwrap_ref          # key of the bwrap variant with the same binds
        self.timings = timings              # parse nvlaunch-timings lines
        self.preexec = preexec
        self.note = note
        self.twin_of = None                 # key of the untimed variant this timed twin mirrors
        self.before, self.after = before, after   # untimed, around each launch: (i) -> None
        self.samples: list[int] = []        # ns
        self.phases: list[dict] = []      # canonical_phases() of each run
        self.raw_phases: list[dict] = []  # the timings lines as printed
        self.failures = 0
        self.available = True
        self.reason = ""
        self.example: list = []

    def argv(self, i: int) -> list:
        return self._argv(i) if callable(self._argv) else self._argv

    def once(self, i: int, base_env: dict) -> tuple[int, int, str]:
        """(elapsed ns, exit status, stderr) of one launch."""
        env = dict(base_env)
        env.update(self.env)
        for k in [k for k, v in env.items() if v is None]:
            del env[k]
        argv = self.argv(i)
        if self.before:
            self.before(i)
        try:
            return self._spawn(argv, env)
        finally:
            if self.after:
                self.after(i)

    def _spawn(self, argv: list, env: dict) -> tuple[int, int, str]:
        watch = Watchdog(RUN_TIMEOUT)
        t0 = time.monotonic_ns()
        if self.timings:
            env["NVLAUNCH_T0_NS"] = str(t0)
        try:
            rc, err = watch.run(argv, env, subprocess.PIPE, self.preexec)
        except OSError as e:
            return time.monotonic_ns() - t0, -1, str(e)
        return time.monotonic_ns() - t0, rc, err

    def record(self, elapsed: int, rc: int, err: str) -> None:
        if rc != 0:
            self.failures += 1
            if not self.reason:
                self.reason = f"exit {rc}: {first_line(err)}"
            return
        self.samples.append(elapsed)
        if self.timings:
            for line in err.splitlines():
                if line.startswith(TIMINGS_PREFIX):
                    try:
                        ph = json.loads(line[len(TIMINGS_PREFIX):])
                    except ValueError:
                        continue
                    self.raw_phases.append(ph)
                    self.phases.append(canonical_phases(ph, ms(elapsed)))

    def summary(self) -> dict:
        vals = [ms(s) for s in self.samples]
        return {"key": self.key, "label": self.label, "user": self.group, "kind": self.kind,
                "available": self.available and bool(vals), "reason": self.reason or None,
                "n": len(vals), "failed": self.failures,
                "median_ms": r3(med(vals)), "p90_ms": r3(p90(vals)) if vals else None,
                "min_ms": r3(min(vals)) if vals else None, "note": self.note or None,
                "command": " ".join(self.example)}


class Watchdog:
    """One launch, waited for by blocking calls, killed if it outlives `limit` seconds.

    Not subprocess.run(timeout=...): with a timeout, Popen.wait polls with sleeps that
    double up to 50 ms, so a launch's sample was rounded up to the next step of 1, 3, 7,
    15, 31, 63, 113, 163 ms: the OCI lifecycle rows came out quantized to ~50 ms.  The
    watchdog thread is started before the clock starts."""

    def __init__(self, limit: float):
        import threading
        self.proc: subprocess.Popen | None = None
        self.timed_out = False
        self.timer = threading.Timer(limit, self._kill)
        self.timer.daemon = True
        self.timer.start()

    def _kill(self) -> None:
        self.timed_out = True
        if self.proc is not None:
            self.proc.kill()

    def run(self, argv: list, env: dict, stderr, preexec=None) -> tuple[int, str]:
        """(exit status, stderr text if `stderr` is PIPE); -1 and "timeout" when killed."""
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr, env=env, cwd=REPO, preexec_fn=preexec)
            err = b""
            if self.proc.stderr is not None:
                err = self.proc.stderr.read()
                self.proc.stderr.close()
            rc = self.proc.wait()
        finally:
            self.timer.cancel()
        if self.timed_out:
            return -1, "timeout"
        return rc, err.decode(errors="replace")


def with_timed_twins(variants: list) -> list:
    """Each variant that reads nvlaunch's timings line becomes two: the variant itself,
    run WITHOUT timings (the figure in the tables: `--timings` imports json, a few ms), and
    a twin right after it with NVLAUNCH_TIMINGS=1 whose lines give the phase breakdown."""
    out = []
    for v in variants:
        if not v.timings:
            out.append(v)
            continue
        twin = Variant(v.key + "~timed", v.label + " [timed]", v._argv, env=dict(v.env), group=v.group,
                       kind=v.kind, timings=True, preexec=v.preexec, before=v.before, after=v.after)
        twin.env["NVLAUNCH_TIMINGS"] = "1"
        twin.twin_of = v.key
        twin.available, twin.reason = v.available, v.reason
        v.timings = False
        v.env.pop("NVLAUNCH_TIMINGS", None)
        out += [v, twin]
    return out


def guarded(res: dict, key: str, fn):
    """res[key] = fn(), or a record of why that section could not run (never raises)."""
    try:
        res[key] = fn()
    except Exception as err:  # noqa: BLE001 - a benchmark section failing is a result too
        res[key] = {"available": False, "reason": f"{type(err).__name__}: {err}"}
        res.setdefault("failed_sections", []).append(f"{key}: {type(err).__name__}: {err}")
        print(f"latency: section {key} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


def run_interleaved(variants: list, rounds: int, warmup: int, base_env: dict, progress=None):
    """Warm-up rounds (each also decides availability), then `rounds` A B C ... rounds."""
    live = [v for v in variants if v.available]
    for w in range(warmup):
        for v in live:
            if not v.available:
                continue
            elapsed, rc, err = v.once(10_000 + w, base_env)
            if rc != 0:
                v.available = False
                v.reason = f"exit {rc}: {first_line(err)}" if rc != -1 else first_line(err)
    live = [v for v in live if v.available]
    for i in range(rounds):
        for v in live:
            v.record(*v.once(i, base_env))
        if progress:
            progress(i + 1, rounds)


# ---------------------------------------------------------------------------------- setup

class Setup:
    """The shared trees: a rootfs, fake hosts, bwrap copies, runc/crun bundles."""

    def __init__(self, work: str, gpu_counts: list, user: pwd.struct_passwd | None):
        self.work = work
        self.user = user
        self.rootfs = build_rootfs(os.path.join(work, "rootfs"), probe=False)
        self.hosts = {n: build_fake_host(os.path.join(work, f"host-{n}gpu"), gpus=n)
                      for n in gpu_counts}
        self.notes: list[str] = []
        # bwrap's writable roots live on a tmpfs, as nvlaunch's mount points do (its upper
        # layer is a tmpfs): on this kind of VM a creat() on ext4 inside a fresh mount
        # namespace costs ~1 ms, which would be charged to bwrap otherwise.
        self.fast = work
        shm = "/dev/shm"
        if _fstype(shm) == "tmpfs" and os.access(shm, os.W_OK):
            self.fast = tempfile.mkdtemp(prefix="nvlaunch-bench-", dir=shm)
            os.chmod(self.fast, 0o755)
        else:
            self.notes.append("no tmpfs at /dev/shm: bwrap's writable roots are on the work "
                              "directory's file system")

    def host_env(self, n: int) -> dict:
        return self.hosts[n].env()

    def chown_for_user(self, path: str) -> None:
        if self.user is None:
            return
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
                os.lchown(name, self.user.pw_uid, self.user.pw_gid)

    def clone(self, src: str, dst: str, for_user: bool) -> None:
        """A hard-linked clone of the tree `src` (new directories and links, shared files):
        a fresh writable root for one bwrap run in about a millisecond, made untimed."""
        owner = (self.user.pw_uid, self.user.pw_gid) if for_user and self.user else None
        n = len(src)
        for dirpath, dirnames, filenames in os.walk(src):
            out = dst + dirpath[n:]
            os.mkdir(out)
            os.chmod(out, os.stat(dirpath).st_mode & 0o7777)
            if owner:
                os.lchown(out, *owner)
            for name in dirnames[:]:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    dirnames.remove(name)
                    filenames.append(name)
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    os.symlink(os.readlink(p), os.path.join(out, name))
                    if owner:
                        os.lchown(os.path.join(out, name), *owner)
                else:
                    os.link(p, os.path.join(out, name))

    def copy_rootfs(self, name: str, for_user: bool = False, fast: bool = False) -> str:
        dest = os.path.join(self.fast if fast else self.work, name)
        subprocess.run(["cp", "-a", self.rootfs + "/.", dest + "/"] if os.path.isdir(dest)
                       else ["cp", "-a", self.rootfs, dest], check=True)
        if for_user:
            self.chown_for_user(dest)
        return dest


def plan_json(nvl: list, host_env: dict, caps: str = "all") -> dict | None:
    proc = sh(nvl + ["list", "--gpus", "all", "--capabilities", caps, "--json"],
              env={**os.environ, **host_env}, cwd=REPO)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return None


def bwrap_args(plan: dict | None, root: str, host, work: str, tag: str, rootfs: str,
               links: bool = True) -> list:
    """bwrap with the binds of nvlaunch's plan, on the writable root `root` (`--bind ROOT /`:
    bwrap 0.8 has no overlay and cannot make mount points in a read-only bind).  The
    /proc/driver/nvidia copies and the merged ld.so.cache nvlaunch writes are bound from
    files prepared here.  links=False: no --symlink (the links already exist in `root`)."""
    args = ["bwrap", "--bind", root, "/", "--proc", "/proc", "--dev", "/dev",
            "--ro-bind", "/sys", "/sys", "--unshare-user", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--die-with-parent"]
    if plan is None:
        return args + ["/bin/true"]
    made = plan.get("made", [])
    # A tmpfs under /proc cannot get its mount point made in procfs: mount it on the nearest
    # directory procfs has (nvlaunch does the same, launch._prepare_late).
    for m in made:
        if m["kind"] == "tmpfs":
            where = m["path"]
            while where.startswith("/proc/") and not os.path.isdir(where):
                where = os.path.dirname(where)
            args += ["--tmpfs", where]
    for d in plan.get("devices", []):
        args += ["--dev-bind", d["host_path"], d["path"]]
    for f in plan.get("files", []):
        args += ["--ro-bind-try" if f.get("readonly", True) else "--bind-try", f["host_path"], f["path"]]
    for link in plan.get("links", []) if links else ():
        args += ["--symlink", link["target"], link["path"]]
    data_dir = os.path.join(work, f"bwrap-data-{tag}")
    os.makedirs(data_dir, exist_ok=True)
    for i, m in enumerate(made):
        if m["kind"] == "writefile":   # nvlaunch writes a copy of the host's file: bind that copy
            src = os.path.join(host.proc_root, m["path"].lstrip("/"))
            if os.path.exists(src):
                dst = os.path.join(data_dir, f"{i}-{os.path.basename(m['path'])}")
                shutil.copyfile(src, dst)
                args += ["--ro-bind", dst, m["path"]]
    if plan.get("ldcache"):          # nvlaunch writes a merged ld.so.cache: bind a prebuilt one
        try:
            from nvlaunch.host.container import merged_cache
            data = merged_cache(rootfs, [tuple(p) for p in plan["ldcache"]])
            cache = os.path.join(data_dir, "ld.so.cache")
            with open(cache, "wb") as f:
                f.write(data)
            args += ["--ro-bind", cache, "/etc/ld.so.cache"]
        except Exception:  # noqa: BLE001 - the bench goes on with one bind fewer
            pass
    return args + ["/bin/true"]


def premake(root: str, plan: dict) -> None:
    """Make in `root` what bwrap would make: the mount points of the plan's files and
    devices (outside /dev and /proc, which bwrap mounts itself) and the links."""
    def inside(path):
        return os.path.join(root, path.lstrip("/"))
    for f in plan.get("files", []) + plan.get("devices", []):
        if f["path"].startswith(("/dev/", "/proc/")) or os.path.lexists(inside(f["path"])):
            continue
        os.makedirs(os.path.dirname(inside(f["path"])), exist_ok=True)
        if os.path.isdir(f["host_path"]):
            os.mkdir(inside(f["path"]))
        else:
            open(inside(f["path"]), "ab").close()
    for link in plan.get("links", []):
        if not os.path.lexists(inside(link["path"])):
            os.makedirs(os.path.dirname(inside(link["path"])), exist_ok=True)
            os.symlink(link["target"], inside(link["path"]))


def runc_bundle(setup: Setup, name: str, hook: str | None, host_env: dict) -> str:
    """A bundle for runc/crun running /bin/true: the `runc spec` default, minus the network
    namespace (nvlaunch and bwrap keep the host's), a writable rootfs copy (the hook creates
    its mount points in it), NVIDIA_VISIBLE_DEVICES=all + NVIDIA_DRIVER_CAPABILITIES=all."""
    bundle = os.path.join(setup.work, name)
    os.makedirs(bundle, exist_ok=True)
    proc = sh(["runc", "spec", "--bundle", bundle])
    if proc.returncode != 0:
        raise RuntimeError(f"runc spec: {first_line(proc.stderr)}")
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    setup.copy_rootfs(os.path.join(name, "rootfs"))
    # root.path stays relative, as `runc spec` writes it: crun hands it to the hook verbatim
    # in the state, which the hook must resolve against the bundle.
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    cfg["process"]["env"] += ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"]
    cfg["linux"]["namespaces"] = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "network"]
    if hook:
        env = [f"{k}={v}" for k, v in host_env.items()]
        env += [f"PYTHONPATH={REPO}", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        if hook == CONSOLE_SCRIPT:   # what `nvlaunch setup` installs: the script itself
            entry = {"path": hook, "args": ["nvlaunch", "hook", "prestart"]}
        else:
            entry = {"path": hook, "args": [hook]}
        cfg["hooks"] = {"prestart": [{**entry, "env": env, "timeout": 30}]}
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return bundle


def hook_wrapper(work: str) -> str:
    """The hook's executable: the console script where installed (as `nvlaunch setup`
    registers it), else a wrapper running `python -m nvlaunch hook prestart`."""
    if os.access(CONSOLE_SCRIPT, os.X_OK):
        return CONSOLE_SCRIPT
    path = os.path.join(work, "nvlaunch-hook")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {PY} -m nvlaunch hook prestart\n")
    os.chmod(path, 0o755)
    return path


_LIBC = None


def _libc():
    """The C library, through ctypes (loaded once: the preexec_fns and the subreaper)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _private_mount_namespace(libc) -> None:
    """In a preexec_fn: a mount namespace of the child's own, nothing propagating back."""
    if libc.unshare(0x00020000) != 0:                                  # CLONE_NEWNS
        os._exit(121)
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:      # MS_REC|MS_PRIVATE
        os._exit(122)


def hide_cgroup2():
    """preexec_fn for crun on a hybrid-cgroup host: crun refuses hybrid mode ("drop all
    controllers from cgroupv2"); in a private mount namespace without the cgroup2 mount it
    sees plain v1 and uses v1 cgroups like runc.  Costs one unshare+umount in the child
    (microseconds) but forces fork() instead of vfork() for that spawn."""
    libc = _libc()
    unified = b"/sys/fs/cgroup/unified"

    def pre():
        _private_mount_namespace(libc)
        libc.umount2(unified, 2)                               # MNT_DETACH
    return pre


# ---------------------------------------------------------------------------------- sections

def build_variants(setup: Setup, user, nvl: list, hosts_main=(1, 8)) -> list:
    """The main interleaved set."""
    vs: list[Variant] = []
    rootfs = setup.rootfs
    as_user = []
    if user is not None:
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                   "--"]
    groups = [("root", [])] if os.geteuid() == 0 else [("self", [])]
    if user is not None and os.geteuid() == 0:
        groups.append((user.pw_name, as_user))

    plans = {n: plan_json(nvl, setup.host_env(n)) for n in hosts_main}
    for n, p in plans.items():
        if p is None:
            setup.notes.append(f"`nvlaunch list --json` failed for {n} GPU(s): bwrap gets no binds")

    for gname, prefix in groups:
        g = "" if gname in ("root", "self") else f"@{gname}"
        tag = g.replace("@", "-")
        bw_base = setup.copy_rootfs(f"rootfs-bwrap{tag}", for_user=bool(prefix), fast=True)
        for n in hosts_main:
            host = setup.hosts[n]
            vs.append(Variant(f"nvlaunch-{n}gpu{g}",
                              f"nvlaunch run --gpus all --capabilities all ({n} GPU{'s' if n > 1 else ''})",
                              prefix + nvl + ["run", "--gpus", "all", "--capabilities", "all", rootfs,
                                              "/bin/true"],
                              env={**host.env(), "NVLAUNCH_TIMINGS": "1"}, group=gname, kind="nvlaunch",
                              bwrap_ref=f"bwrap-{n}gpu{g}", timings=True))
        if not prefix:
            n = hosts_main[0]
            vs.append(Variant(f"nvlaunch-{n}gpu-nocache{g}",
                              f"nvlaunch run --gpus all --capabilities all ({n} GPU), plan cache off",
                              prefix + nvl + ["run", "--gpus", "all", "--capabilities", "all", rootfs,
                                              "/bin/true"],
                              env={**setup.host_env(n), "NVLAUNCH_TIMINGS": "1", "NVLAUNCH_NO_CACHE": "1"},
                              group=gname, kind="nvlaunch", bwrap_ref=f"bwrap-{n}gpu{g}", timings=True,
                              note="NVLAUNCH_NO_CACHE=1: discovery and plan on every launch"))
        vs.append(Variant(f"nvlaunch-nogpu{g}", "nvlaunch run --no-gpu",
                          prefix + nvl + ["run", "--no-gpu", rootfs, "/bin/true"],
                          env={**setup.host_env(hosts_main[0]), "NVLAUNCH_TIMINGS": "1"}, group=gname,
                          kind="nvlaunch", bwrap_ref=f"bwrap-nobind{g}", timings=True))
        # bwrap on a fresh hard-linked clone per run: it makes every mount point and link.
        for n in (*hosts_main, None):
            key = f"bwrap-{n}gpu{g}" if n else f"bwrap-nobind{g}"
            fresh = os.path.join(setup.fast, f"bwrap-root-{n or 0}{tag}")
            template = prefix + bwrap_args(plans[n] if n else None, "@ROOT@", setup.hosts.get(n),
                                           setup.work, f"{n}{tag}", rootfs)
            vs.append(Variant(key, f"bwrap, same binds as nvlaunch ({n} GPU{'s' if n > 1 else ''})"
                              if n else "bwrap, no GPU binds",
                              lambda i, fresh=fresh, template=template: [
                                  f"{fresh}.{i}" if x == "@ROOT@" else x for x in template],
                              group=gname, kind="bwrap",
                              before=lambda i, fresh=fresh, own=bool(prefix), base=bw_base:
                                  setup.clone(base, f"{fresh}.{i}", own),
                              after=lambda i, fresh=fresh: shutil.rmtree(f"{fresh}.{i}", ignore_errors=True),
                              note="fresh hard-linked rootfs clone per run (made untimed)"))
            if n and plans[n] is None:
                vs[-1].available, vs[-1].reason = False, "no plan: `nvlaunch list --json` failed"
        # The floor: mount points and links already in the root, bwrap only mounts.
        n = hosts_main[0]
        if plans[n] is not None:
            floor_root = setup.copy_rootfs(f"rootfs-bwrap-premade{tag}", fast=True)
            premake(floor_root, plans[n])
            if prefix:
                setup.chown_for_user(floor_root)
            vs.append(Variant(f"bwrap-{n}gpu-premade{g}",
                              f"bwrap, same binds ({n} GPU), mount points and links pre-made",
                              prefix + bwrap_args(plans[n], floor_root, setup.hosts[n], setup.work,
                                                  f"{n}{tag}", rootfs, links=False),
                              group=gname, kind="bwrap",
                              note="mount points and links pre-made: bwrap only mounts"))
        vs.append(Variant(f"unshare{g}", "unshare -U -r -m -p -f chroot ROOTFS (floor)",
                          prefix + ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork",
                                    "chroot", rootfs, "/bin/true"], group=gname, kind="floor"))
        if prefix:
            vs.append(Variant(f"setpriv{g}", "setpriv ... /bin/true (the user switch alone)",
                              prefix + ["/bin/true"], group=gname, kind="baseline"))

    # OCI runtimes (root only).
    if os.geteuid() == 0:
        hook = hook_wrapper(setup.work)
        hook_ok = os.path.exists(os.path.join(REPO, "nvlaunch", "frontends", "oci_hook.py"))
        env1 = setup.host_env(hosts_main[0])
        for rt in ("runc", "crun"):
            state = os.path.join(setup.work, f"state-{rt}")
            if shutil.which(rt) is None:
                v = Variant(rt, f"{rt} run", ["true"], kind="oci")
                v.available, v.reason = False, f"{rt} not installed"
                vs.append(v)
                continue
            mode = None   # (extra global options, preexec_fn, note), picked on the plain bundle
            for with_hook in (False, True):
                key = f"{rt}{'-hook' if with_hook else ''}"
                label = f"{rt} run" + (" + prestart hook `nvlaunch hook prestart` (1 GPU)"
                                       if with_hook else "")
                try:
                    bundle = runc_bundle(setup, f"bundle-{key}", hook if with_hook else None, env1)
                except (RuntimeError, OSError) as err:
                    v = Variant(key, label, ["true"], kind="oci")
                    v.available, v.reason = False, str(err)
                    vs.append(v)
                    continue
                pid = os.getpid()

                def argv_of(extra=(), rt=rt, bundle=bundle, key=key, state=state, pid=pid):
                    return lambda i: [rt, "--root", state, *extra, "run", "--bundle", bundle,
                                      f"bench-{pid}-{key}-{i}"]
                if mode is None:
                    mode = _pick_runtime_mode(argv_of) if rt == "crun" else ((), None, "")
                    if mode[2]:
                        setup.notes.append(f"{rt}: {mode[2]}")
                v = Variant(key, label, argv_of(mode[0]), group="root", kind="oci", preexec=mode[1],
                            note=mode[2])
                if with_hook and not hook_ok:
                    v.available, v.reason = False, "nvlaunch/frontends/oci_hook.py does not exist"
                vs.append(v)
    return vs


def _pick_runtime_mode(argv_of) -> tuple:
    """crun refuses hybrid cgroups: try it as is, with --cgroup-manager=disabled, then with
    the cgroup2 mount hidden in a private mount namespace (v1 cgroups, like runc)."""
    tries = [((), None, ""),
             (("--cgroup-manager=disabled",), None, "--cgroup-manager=disabled (no cgroups)"),
             ((), hide_cgroup2(),
              "cgroup2 mount hidden in a private mount namespace (v1 cgroups, like runc)")]
    for extra, pre, note in tries:
        probe = Variant("probe", "probe", argv_of(extra), preexec=pre)
        _, rc, err = probe.once(99_999, os.environ.copy())
        if rc == 0:
            return extra, pre, note
    return tries[0]


def baselines(nvl: list) -> list:
    site = _site_packages()
    vs = [Variant("true", "fork+exec /bin/true", ["/bin/true"], kind="baseline"),
          Variant("nvlaunch-help", "nvlaunch --help (interpreter + `import nvlaunch.cli`)",
                  nvl + ["--help"], kind="baseline"),
          Variant("py-pass", "python -c pass", [PY, "-c", "pass"], kind="baseline"),
          Variant("py-IS-pass", "python -I -S -c pass", [PY, "-I", "-S", "-c", "pass"], kind="baseline"),
          Variant("py-import-cli", "python -c 'import nvlaunch.cli'", [PY, "-c", "import nvlaunch.cli"],
                  kind="baseline"),
          Variant("py-IS-import-cli", "python -I -S + sys.path, import nvlaunch.cli",
                  [PY, "-I", "-S", "-c",
                   f"import sys; sys.path[:0] = [{REPO!r}, {site!r}]; import nvlaunch.cli"],
                  kind="baseline")]
    return vs


def _editable_pth() -> str | None:
    """The name of a setuptools editable-finder .pth in the venv, if any."""
    site = _site_packages()
    try:
        names = os.listdir(site) if site else []
    except OSError:
        return None
    hits = [n for n in names if n.startswith("__editable__") and n.endswith(".pth")]
    for n in hits:
        try:
            with open(os.path.join(site, n)) as f:
                if "import " in f.read():
                    return n
        except OSError:
            pass
    return None


def _site_packages() -> str:
    out = sh([PY, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    return out or ""


PREPARE_PROBE = r"""
import os, sys, time        # nothing else before the clock: json would preload re, enum, ...
t0 = time.monotonic_ns()
import nvlaunch.cli
t1 = time.monotonic_ns()
from nvlaunch.exec.launch import run
from nvlaunch.exec.runroot import RunConfig
from nvlaunch.plan.records import Plan
from nvlaunch.plan.request import Request
from nvlaunch.plan.build import build_plan
from nvlaunch.host.container import container_libdir
from nvlaunch.host.view import HostView
t2 = time.monotonic_ns()
host = HostView.from_env()
plan = build_plan(Request(gpus="all", capabilities="all", env=()), host, container_libdir(sys.argv[1]))
t3 = time.monotonic_ns()
plan2 = build_plan(Request(gpus="all", capabilities="all", env=()), host, container_libdir(sys.argv[1]))
t4 = time.monotonic_ns()
import nvlaunch.kernel.real
t5 = time.monotonic_ns()
cached = None
try:
    from nvlaunch.plan import cache as plancache
    libdir = container_libdir(sys.argv[1])
    req = Request(gpus="all", capabilities="all", env=())
    plancache.cached_plan(req, host, libdir)          # stores it (a miss) or finds it
    t6 = time.monotonic_ns()
    hit = plancache.load(plancache.key(host, req, libdir))
    cached = (time.monotonic_ns() - t6) / 1e6 if hit is not None else None
except Exception:
    pass
import json
json.dump({"import nvlaunch.cli": (t1 - t0) / 1e6,
           "imports of run (launch, build, plan, ...)": (t2 - t1) / 1e6,
           "discovery + plan (first, incl. lazy imports)": (t3 - t2) / 1e6,
           "discovery + plan (again, warm)": (t4 - t3) / 1e6,
           "imports after prepare (kernel/_ns)": (t5 - t4) / 1e6,
           "plan cache key + load (hit), where nvlaunch has one": cached,
           "entries": len(plan.entries)}, sys.stdout)
"""


def prepare_split(setup: Setup, n_gpu: int, runs: int) -> dict:
    """Where nvlaunch's "prepare" phase goes, measured in fresh interpreters."""
    env = {**os.environ, **setup.host_env(n_gpu), "PYTHONPATH": REPO}
    rows = []
    err = ""
    for _ in range(runs):
        proc = sh([PY, "-c", PREPARE_PROBE, setup.rootfs], env=env, cwd=REPO)
        if proc.returncode != 0:
            err = first_line(proc.stderr)
            break
        rows.append(json.loads(proc.stdout))
    if not rows:
        return {"available": False, "reason": err}
    return {"available": True, "gpus": n_gpu, "n": len(rows),
            "median_ms": {k: r3(med([r[k] for r in rows if r[k] is not None])) for k in rows[0]
                          if k != "entries" and any(r[k] is not None for r in rows)},
            "entries": rows[0]["entries"]}


_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_profile(nvl_argv: list, env: dict, runs: int, top: int = 15) -> dict:
    """-X importtime of one launch, medians over `runs`: top modules by self time, and
    the top-level imports (least indented) by cumulative time.  nvl_argv: the nvlaunch
    command (console script or `python -m nvlaunch`) and its arguments."""
    if nvl_argv[0] == PY:
        nvl_argv = nvl_argv[1:]
    selfs: dict = {}
    cums: dict = {}
    depth: dict = {}
    totals = []
    for _ in range(runs):
        proc = subprocess.run([PY, "-X", "importtime", *nvl_argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO,
                              timeout=RUN_TIMEOUT)
        seen = {}
        total = 0
        for line in proc.stderr.decode(errors="replace").splitlines():
            m = _IMPORT_LINE.match(line)
            if not m:
                continue
            s, c, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
            seen.setdefault(name, [0, 0, indent])
            seen[name][0] += s
            seen[name][1] += c
            total += s
        for name, (s, c, ind) in seen.items():
            selfs.setdefault(name, []).append(s)
            cums.setdefault(name, []).append(c)
            depth[name] = ind
        totals.append(total)
    if not totals:
        return {"available": False}
    min_depth = min(depth.values()) if depth else 1
    by_self = sorted(selfs, key=lambda k: -med(selfs[k]))[:top]
    top_level = sorted([k for k in cums if depth[k] == min_depth], key=lambda k: -med(cums[k]))[:top]
    pkgs: dict = {}
    for name, vals in selfs.items():
        root = name.split(".")[0]
        pkgs.setdefault(root, []).append(med(vals))
    return {"available": True, "runs": runs, "total_self_ms": r3(med(totals) / 1000),
            "top_self_us": [[k, round(med(selfs[k]))] for k in by_self],
            "top_level_cumulative_us": [[k, round(med(cums[k]))] for k in top_level],
            "by_package_ms": sorted([[k, r3(sum(v) / 1000)] for k, v in pkgs.items()],
                                    key=lambda kv: -kv[1])[:top]}


def ldcache_bench(reps: int) -> dict:
    """parse() of a 1,000-entry cache made by build(), in this process."""
    try:
        from nvlaunch.host import ldcache
    except Exception as err:  # noqa: BLE001
        return {"available": False, "reason": str(err)}
    flags = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_X8664_LIB64
    entries = [ldcache.CacheEntry(key=f"libbench{i:04d}.so.{i % 7}",
                                  value=f"/usr/lib/x86_64-linux-gnu/libbench{i:04d}.so.{i % 7}",
                                  flags=flags) for i in range(1000)]
    data = ldcache.build(entries)
    assert len(ldcache.parse(data)) == 1000
    t = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        ldcache.parse(data)
        t.append(time.perf_counter_ns() - t0)
    tb = []
    for _ in range(max(5, reps // 10)):
        t0 = time.perf_counter_ns()
        ldcache.build(entries)
        tb.append(time.perf_counter_ns() - t0)
    return {"available": True, "entries": 1000, "bytes": len(data), "n": reps,
            "parse_median_ms": r3(med(t) / 1e6), "parse_p90_ms": r3(p90(t) / 1e6),
            "build_median_ms": r3(med(tb) / 1e6)}


def concurrent(v: Variant, count: int, reps: int, base_env: dict) -> dict:
    """Wall time for `count` launches of `v` started at once."""
    if not v.available:
        return {"available": False, "reason": v.reason}
    walls, failed = [], 0
    for r in range(reps):
        env = {k: x for k, x in {**base_env, **v.env}.items() if x is not None}
        env.pop("NVLAUNCH_TIMINGS", None)
        ids = [50_000 + r * count + i for i in range(count)]
        argvs = [v.argv(i) for i in ids]
        if v.before:
            for i in ids:
                v.before(i)
        import threading
        procs: list[subprocess.Popen] = []
        # Killed together past the limit; waited for with blocking calls (Watchdog says why).
        timer = threading.Timer(RUN_TIMEOUT * 4, lambda procs=procs: [p.kill() for p in procs])
        timer.daemon = True
        timer.start()
        t0 = time.monotonic_ns()
        try:
            for argv in argvs:
                procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, env=env, cwd=REPO,
                                              preexec_fn=v.preexec))
        except OSError as err:
            timer.cancel()
            for p in procs:
                p.wait()
            return {"available": False, "label": v.label, "reason": str(err)}
        rcs = [p.wait() for p in procs]
        walls.append(time.monotonic_ns() - t0)
        timer.cancel()
        if v.after:
            for i in ids:
                v.after(i)
        failed += sum(1 for rc in rcs if rc != 0)
    vals = [ms(w) for w in walls]
    return {"available": True, "label": v.label, "user": v.group, "count": count, "reps": reps,
            "median_wall_ms": r3(med(vals)), "min_wall_ms": r3(min(vals)),
            "per_launch_ms": r3(med(vals) / count), "failed": failed}


def scaling_section(setup: Setup, variants: list, nvl: list, gpu_counts: list, n: int, warmup: int,
                    base_env: dict, short: bool, quick: bool) -> dict:
    """Latency against the number of GPUs and the capabilities (root, interleaved among
    themselves), and 32 launches started at once."""
    scaling: dict = {"gpus": [], "capabilities": [], "concurrent": []}
    by_key = {v.key: v for v in variants}
    if not short:
        print("scaling ...", flush=True)
        sv = []
        for g in gpu_counts:
            sv.append(Variant(f"s-gpus-{g}", f"{g}", nvl + ["run", "--gpus", "all", "--capabilities", "all",
                                                            setup.rootfs, "/bin/true"],
                              env={**setup.host_env(g), "NVLAUNCH_TIMINGS": "1"}, timings=True,
                              kind="nvlaunch"))
        for caps in ("utility", "compute,utility", "all"):
            sv.append(Variant(f"s-caps-{caps}", caps, nvl + ["run", "--gpus", "all", "--capabilities", caps,
                                                             setup.rootfs, "/bin/true"],
                              env={**setup.host_env(1), "NVLAUNCH_TIMINGS": "1"}, timings=True,
                              kind="nvlaunch"))
        sv = with_timed_twins(sv)
        run_interleaved(sv, n, warmup, base_env)
        timed = {v.twin_of: v for v in sv if v.twin_of}
        for v in sv:
            if v.twin_of:
                continue
            s = v.summary()
            ph = timed[v.key].phases if v.key in timed else []
            row = {"median_ms": s["median_ms"], "p90_ms": s["p90_ms"], "n": s["n"],
                   "prepare_ms": r3(med([p["prepare"] for p in ph if "prepare" in p])),
                   "mounts_ms": r3(med([p["mounts"] for p in ph if "mounts" in p]))}
            if v.key.startswith("s-gpus-"):
                scaling["gpus"].append({"gpus": int(v.label), **row})
            else:
                scaling["capabilities"].append({"capabilities": v.label, **row})
    else:
        for g in (1, 8, 16):
            v, t = by_key.get(f"nvlaunch-{g}gpu"), by_key.get(f"nvlaunch-{g}gpu~timed")
            if v and v.samples:
                s = v.summary()
                ph = t.phases if t else []
                scaling["gpus"].append({"gpus": g, "median_ms": s["median_ms"], "p90_ms": s["p90_ms"],
                                        "n": s["n"],
                                        "mounts_ms": r3(med([p["mounts"] for p in ph if "mounts" in p]))})
    print("32 at once ...", flush=True)
    for key in ("nvlaunch-1gpu", f"headline@{setup.user.pw_name}" if setup.user else "headline", "bwrap-1gpu",
                "runc"):
        if key in by_key:
            scaling["concurrent"].append(concurrent(by_key[key], 32, 2 if quick else 5, base_env))
    return scaling


# ---------------------------------------------------------------------------------- peers
# Issue 15: NVIDIA's CDI runtime, runc + the hook `nvlaunch setup runc` writes, podman with
# nvlaunch's CDI spec, the default-capabilities headline row, ld.so.cache scaling.

NVCT_TARBALL = os.environ.get("NVLAUNCH_BENCH_NVCT") or os.path.join(
    os.path.dirname(REPO), "shared", "anchors", "nvidia-container-toolkit-1.20.0-amd64.tar.xz")
LD_SIZES = (9, 500, 5000)
CDI_ALL = "nvidia.com/gpu=all"


class Lifecycle(Variant):
    """An OCI lifecycle as a container engine drives it: `create` (through `create_argv`:
    runc itself or a runtime wrapping it), `runc start`, wait for the container's process
    to exit, `runc delete`.  One sample spans all of it.  Before each run (untimed) the
    files in `restore` are put back: NVIDIA's runtime rewrites config.json in place and its
    update-ldcache hook (and any hook) may rewrite the rootfs's ld.so.cache."""

    def __init__(self, key, label, create_argv, state, bundle, env=None, restore=(), note=""):
        super().__init__(key, label, lambda i: create_argv + ["create", "--bundle", bundle,
                                                              self._id(i)],
                         env=env, group="root", kind="lifecycle", note=note)
        self.create_argv, self.state, self.bundle, self.restore = create_argv, state, bundle, restore

    def _id(self, i):
        return f"lc-{os.getpid()}-{self.key}-{i}"

    def once(self, i: int, base_env: dict) -> tuple[int, int, str]:
        env = dict(base_env)
        env.update(self.env)
        for k in [k for k, v in env.items() if v is None]:
            del env[k]
        for src, dst in self.restore:
            shutil.copyfile(src, dst + ".bench-tmp")
            os.replace(dst + ".bench-tmp", dst)
        cid = self._id(i)
        pidfile = os.path.join(self.state, f"{cid}.pid")
        runc = ["runc", "--root", self.state]

        errf = tempfile.TemporaryFile()

        watches = [Watchdog(RUN_TIMEOUT) for _ in range(3)]   # before the clock

        def step(argv):
            # stderr to a file, not a pipe: the container's process holds what `create`
            # gave it until it exits, which is after `start`.
            errf.seek(0)
            errf.truncate()
            rc, _ = watches.pop().run(argv, env, errf)
            if rc == 0:
                return 0, ""
            errf.seek(0)
            return rc, errf.read().decode(errors="replace") or f"exit {rc}"
        # As containerd's shim and conmon are: the subreaper of the container, so that
        # its process, orphaned when `create` exits, is reaped the moment it exits.  Left
        # to this machine's init, a zombie waited up to ~50 ms for it, and `runc delete`
        # (whose cgroup rmdir is refused while the zombie is a member) slept in steps of
        # that size: every lifecycle row came out quantized to ~50 ms.
        _subreaper(True)
        t0 = time.monotonic_ns()
        try:
            rc, err = step(self.create_argv + ["create", "--bundle", self.bundle, "--pid-file", pidfile, cid])
            if rc == 0:
                rc, err = step(runc + ["start", cid])
            if rc == 0:
                rc, err = _wait_exit(pidfile)
            if rc == 0:
                rc, err = step(runc + ["delete", cid])
            elapsed = time.monotonic_ns() - t0
        except OSError as e:
            elapsed, rc, err = time.monotonic_ns() - t0, -1, str(e)
        finally:
            for w in watches:
                w.timer.cancel()
            _subreaper(False)
            _reap_orphans()
        errf.close()
        if rc != 0:
            sh(runc + ["delete", "--force", cid])
        try:
            os.unlink(pidfile)
        except OSError:
            pass
        return elapsed, rc, err


PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    _libc().prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap_orphans() -> None:
    """Reap what was orphaned onto us while we were a subreaper (no child of ours is
    running at this point: every step's subprocess has been waited for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_exit(pidfile: str, limit_s: float = 20.0) -> tuple[int, str]:
    """Wait until the container's process has exited, and reap it: it is our child,
    reparented to us as the subreaper (Lifecycle.once).  Where it is not (it was
    reparented elsewhere), gone from /proc or a zombie counts.  Polls every 0.2 ms."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as err:
        return 1, f"pid file: {err}"
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return 0, ""
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return 0, ""
        if state in ("Z", "X"):
            return 0, ""
        time.sleep(0.0002)
    return 1, "container process did not exit"


def synthetic_ldcache_rootfs(setup: Setup, entries: int) -> str:
    """A copy of the bench rootfs whose /etc/ld.so.cache has exactly `entries` entries: the
    rootfs's own, then synthetic libbenchNNNN.so.1 ones (files that do not exist) made with
    nvlaunch.host.ldcache.build."""
    from nvlaunch.host import ldcache
    dest = setup.copy_rootfs(f"rootfs-ld{entries}")
    path = os.path.join(dest, "etc", "ld.so.cache")
    with open(path, "rb") as f:
        own = ldcache.parse(f.read())
    flags = ldcache.FLAG_ELF_LIBC6 | ldcache.FLAG_X8664_LIB64
    synth = [ldcache.CacheEntry(key=f"libbench{i:05d}.so.1",
                                value=f"/usr/lib/x86_64-linux-gnu/libbench{i:05d}.so.1", flags=flags)
             for i in range(max(0, entries - len(own)))]
    data = ldcache.build(list(own)[:entries] + synth)
    with open(path, "wb") as f:
        f.write(data)
    got = len(ldcache.parse(data))
    if got != entries:
        setup.notes.append(f"ld.so.cache of {entries} entries came out with {got}")
    return dest


def lifecycle_bundle(setup: Setup, name: str, rootfs_src: str, hook_entry: dict | None,
                     visible: str = CDI_ALL) -> tuple[str, str]:
    """A runc bundle (`runc spec` defaults minus the network namespace, writable rootfs
    copy of `rootfs_src`) asking NVIDIA_VISIBLE_DEVICES=`visible` with every capability;
    with `hook_entry` in hooks.prestart.  Returns (bundle, pristine config)."""
    bundle = os.path.join(setup.work, name)
    if os.path.isdir(bundle):
        shutil.rmtree(bundle)
    os.makedirs(bundle)
    proc = sh(["runc", "spec", "--bundle", bundle])
    if proc.returncode != 0:
        raise RuntimeError(f"runc spec: {first_line(proc.stderr)}")
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    subprocess.run(["cp", "-a", rootfs_src, os.path.join(bundle, "rootfs")], check=True)
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    cfg["process"]["env"] += [f"NVIDIA_VISIBLE_DEVICES={visible}", "NVIDIA_DRIVER_CAPABILITIES=all"]
    cfg["linux"]["namespaces"] = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "network"]
    if hook_entry:
        cfg.setdefault("hooks", {}).setdefault("prestart", []).append(hook_entry)
    text = json.dumps(cfg, indent=1)
    pristine = os.path.join(bundle, "config.json.pristine")
    for p in (os.path.join(bundle, "config.json"), pristine):
        with open(p, "w") as f:
            f.write(text)
    return bundle, pristine


def _setup_writes(host, system: str, name: str, initial: dict | None, pick) -> dict | None:
    """The hook entry `nvlaunch setup SYSTEM --config FILE` writes for this fake host, run
    as the console script: `pick` finds it in FILE's JSON (FILE starts as `initial`, or
    absent).  None where the console script is not installed or the set-up fails."""
    if not os.access(CONSOLE_SCRIPT, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        if initial is not None:
            with open(path, "w") as f:
                json.dump(initial, f)
        proc = subprocess.run([CONSOLE_SCRIPT, "--driver-root", host.driver_root, "--dev-root",
                               host.dev_root, "--proc-root", host.proc_root, "setup", system,
                               "--config", path], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return None
        with open(path) as f:
            return pick(json.load(f))


def nvlaunch_hook_entry(host) -> dict:
    """The prestart entry `nvlaunch setup runc --config` writes for this fake host, run as
    the console script where it is installed (oci.hooks.invocation from this process
    where it is not)."""
    entry = _setup_writes(host, "runc", "config.json",
                          {"ociVersion": "1.0.2", "process": {"args": ["/bin/true"]}},
                          lambda doc: doc["hooks"]["prestart"][0])
    if entry is not None:
        return entry
    from nvlaunch.oci.hooks import hook_entry, invocation
    gopts = {"driver_root": host.driver_root, "dev_root": host.dev_root, "proc_root": host.proc_root}
    return hook_entry(invocation(None, gopts, environ={}))


def nvlaunch_hooks_d_entry(host) -> dict | None:
    """The hook of the hooks.d file `nvlaunch setup podman --config` writes for this fake
    host (run as the console script): the void gate, where it is built."""
    return _setup_writes(host, "podman", "nvlaunch.json", None, lambda doc: doc["hook"])


def setup_nvidia(setup: Setup, host) -> dict | None:
    """NVIDIA Container Toolkit from the anchors tarball, in CDI mode over runc, with a
    management-mode spec of the fake host.  None (and a note) when it cannot be."""
    if not os.path.isfile(NVCT_TARBALL):
        setup.notes.append(f"NVIDIA's CDI runtime rows skipped: no {NVCT_TARBALL}")
        return None
    d = os.path.join(setup.work, "nvct")
    os.makedirs(os.path.join(d, "cdi"), exist_ok=True)
    steps = [
        ["tar", "-xJf", NVCT_TARBALL, "-C", d],
        [f"{d}/nvidia-ctk", "cdi", "generate", "--mode=management", f"--driver-root={host.driver_root}",
         f"--dev-root={host.dev_root}", f"--nvidia-cdi-hook-path={d}/nvidia-cdi-hook",
         f"--output={d}/cdi/nvidia.yaml"],
        [f"{d}/nvidia-ctk", "config", "default", "-o", f"{d}/config.toml"],
        [f"{d}/nvidia-ctk", "config", "-c", f"{d}/config.toml", "-i",
         "--set", "nvidia-container-runtime.mode=cdi",
         "--set", f"nvidia-container-runtime.runtimes={shutil.which('runc')}",
         "--set", f"nvidia-container-runtime.modes.cdi.spec-dirs={d}/cdi",
         "--set", f"nvidia-ctk.path={d}/nvidia-ctk"]]
    for argv in steps:
        proc = sh(argv)
        if proc.returncode != 0:
            setup.notes.append(f"NVIDIA's CDI runtime rows skipped: {' '.join(argv[:3])}: "
                               f"{first_line(proc.stderr)}")
            return None
    return {"runtime": f"{d}/nvidia-container-runtime",
            "env": {"NVIDIA_CTK_CONFIG_FILE_PATH": f"{d}/config.toml"}}


def peer_variants(setup: Setup, nvl: list, user) -> list:
    """The rows of issue 15 (root, except the headline pair, which runs as `user`)."""
    vs: list[Variant] = []
    host = setup.hosts[1]
    # 3. the headline: default capabilities (compute,utility), as the unprivileged user
    prefix, gname, g, tag = [], ("root" if os.geteuid() == 0 else "self"), "", ""
    if user is not None and os.geteuid() == 0:
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        gname, g, tag = user.pw_name, f"@{user.pw_name}", f"-{user.pw_name}"
    plan = plan_json(nvl, host.env(), caps="compute,utility")
    vs.append(Variant(f"headline{g}", "HEADLINE nvlaunch run --gpus all (default capabilities, 1 GPU)",
                      prefix + nvl + ["run", "--gpus", "all", setup.rootfs, "/bin/true"],
                      env={**host.env(), "NVLAUNCH_TIMINGS": "1"}, group=gname, kind="nvlaunch",
                      bwrap_ref=f"bwrap-default{g}", timings=True))
    base = setup.copy_rootfs(f"rootfs-bwrap-default{tag}", for_user=bool(prefix), fast=True)
    fresh = os.path.join(setup.fast, f"bwrap-root-default{tag}")
    template = prefix + bwrap_args(plan, "@ROOT@", host, setup.work, f"default{tag}", setup.rootfs)
    vs.append(Variant(f"bwrap-default{g}", "bwrap, same binds as nvlaunch (default capabilities, 1 GPU)",
                      lambda i: [f"{fresh}.{i}" if x == "@ROOT@" else x for x in template],
                      group=gname, kind="bwrap",
                      before=lambda i: setup.clone(base, f"{fresh}.{i}", bool(prefix)),
                      after=lambda i: shutil.rmtree(f"{fresh}.{i}", ignore_errors=True),
                      note="fresh hard-linked rootfs clone per run (made untimed)"))
    if plan is None:
        vs[-1].available, vs[-1].reason = False, "no plan: `nvlaunch list --json` failed"
    # 5. 16 GPUs (flatness against the 1-GPU row), root
    if 16 in setup.hosts:
        vs.append(Variant("nvlaunch-16gpu", "nvlaunch run --gpus all --capabilities all (16 GPUs)",
                          nvl + ["run", "--gpus", "all", "--capabilities", "all", setup.rootfs, "/bin/true"],
                          env={**setup.hosts[16].env(), "NVLAUNCH_TIMINGS": "1"},
                          group="root" if os.geteuid() == 0 else "self", kind="nvlaunch", timings=True))
    if os.geteuid() != 0:
        setup.notes.append("not root: the lifecycle, NVIDIA and podman rows are skipped")
        return vs
    # 1. + 4. OCI lifecycles: plain runc, runc + nvlaunch's hook, NVIDIA's CDI runtime
    ld_roots = {}
    try:
        ld_roots = {n: synthetic_ldcache_rootfs(setup, n) for n in LD_SIZES}
    except Exception as err:  # noqa: BLE001 - the section goes on without the scaling rows
        setup.notes.append(f"ld.so.cache scaling rows skipped: {type(err).__name__}: {err}")
    for n, root in ld_roots.items():
        vs.append(Variant(f"nvlaunch-ld{n}", f"nvlaunch run --gpus all --capabilities all, ld.so.cache {n:,}",
                          nvl + ["run", "--gpus", "all", "--capabilities", "all", root, "/bin/true"],
                          env=host.env(), kind="ldcache"))
    if shutil.which("runc") is None:
        setup.notes.append("runc not installed: no lifecycle rows")
        return vs + podman_variants(setup, host)
    try:
        entry = nvlaunch_hook_entry(host)
    except Exception as err:  # noqa: BLE001
        entry = None
        setup.notes.append(f"nvlaunch hook entry: {type(err).__name__}: {err}")
    nvidia = setup_nvidia(setup, host)
    state = os.path.join(setup.work, "state-lifecycle")
    os.makedirs(state, exist_ok=True)
    runc = ["runc", "--root", state]

    visible = {"hook": CDI_ALL}

    def add(key, label, rootfs_src, hook, create, env=None, note="", visible=visible):
        def make(vis):
            bundle, pristine = lifecycle_bundle(setup, f"bundle-{key}", rootfs_src, hook, vis)
            cache = os.path.join(bundle, "rootfs", "etc", "ld.so.cache")
            saved = cache + ".bench-pristine"
            shutil.copyfile(cache, saved)
            return Lifecycle(key, label, create, state, bundle, env=env, note=note or None,
                             restore=[(pristine, os.path.join(bundle, "config.json")), (saved, cache)])
        if isinstance(visible, str):        # a fixed value for this row
            visible = {"hook": visible}
        try:
            v = make(visible["hook"] if hook else CDI_ALL)
            if hook and visible["hook"] == CDI_ALL:
                # Does nvlaunch's hook take the CDI name?  If not, its bundles ask `all`.
                _, rc, err = v.once(99_997, os.environ.copy())
                if rc != 0 and CDI_ALL in err:
                    visible["hook"] = "all"
                    setup.notes.append(f"nvlaunch's hook refuses NVIDIA_VISIBLE_DEVICES={CDI_ALL} "
                                       f"({first_line(err.split('nvlaunch: error:')[-1])[:120]}): the "
                                       "bundles of the hook rows ask NVIDIA_VISIBLE_DEVICES=all")
                    v = make("all")
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            v = Variant(key, label, ["true"], kind="lifecycle")
            v.available, v.reason = False, str(err)
        vs.append(v)
    add("lc-runc", "runc create/start/delete (plain)", setup.rootfs, None, runc)
    if entry:
        add("lc-hook", "runc create/start/delete + `nvlaunch hook prestart`", setup.rootfs, entry, runc)
        # What bounds a hook written in Python, in the same run: runc's own cost of calling
        # a hook, the interpreter the entry starts, and nvlaunch with nothing to do.
        add("lc-hook-true", "runc lifecycle + a `/bin/true` prestart hook (runc's cost of a hook)",
            setup.rootfs, {"path": "/bin/true", "args": ["true"]}, runc)
        add("lc-hook-python", "runc lifecycle + a `python -I -S -c pass` prestart hook (the interpreter)",
            setup.rootfs, {"path": sys.executable, "args": ["python", "-I", "-S", "-c", "pass"]}, runc)
        add("lc-hook-void", "runc lifecycle + nvlaunch hook, NVIDIA_VISIBLE_DEVICES=void (nothing to do)",
            setup.rootfs, entry, runc, visible="void")
        gate = nvlaunch_hooks_d_entry(host)
        if gate and gate["path"] != entry["path"]:
            add("lc-gate-void", "runc lifecycle + nvlaunch's hooks.d entry (the void gate), "
                "NVIDIA_VISIBLE_DEVICES=void", setup.rootfs, gate, runc, visible="void")
    if nvidia:
        add("lc-nvidia", "nvidia-container-runtime (CDI mode) over runc, create/start/delete",
            setup.rootfs, None, [nvidia["runtime"], "--root", state], env=nvidia["env"])
    for n, root in ld_roots.items():
        if entry:
            add(f"lc-hook-ld{n}", f"runc lifecycle + nvlaunch hook, ld.so.cache {n:,}", root, entry, runc)
        if nvidia:
            add(f"lc-nvidia-ld{n}", f"NVIDIA CDI runtime lifecycle, ld.so.cache {n:,}", root, None,
                [nvidia["runtime"], "--root", state], env=nvidia["env"])
    return vs + podman_variants(setup, host)


def _cdi_namespace(spec_dir: str):
    """preexec_fn: a private mount namespace whose /var/run/cdi (or /etc/cdi) is `spec_dir`,
    so that podman 4.3 (no --cdi-spec-dir, no cdi_spec_dirs) finds only nvlaunch's spec and
    the host's directories stay untouched.  Microseconds; both podman rows get it."""
    libc = _libc()
    target = next((p for p in ("/var/run/cdi", "/run/cdi", "/etc/cdi") if os.path.isdir(p)), None)
    if target is None:
        return None, "no /var/run/cdi or /etc/cdi to bind the spec directory over"
    src, dst = spec_dir.encode(), target.encode()

    def pre():
        _private_mount_namespace(libc)
        if libc.mount(src, dst, None, 0x1000, None) != 0:                  # MS_BIND
            os._exit(123)
    return pre, ""


def podman_variants(setup: Setup, host) -> list:
    """2. rootful podman (private --root/--runroot, --network none, an image imported from
    the bench rootfs), plain and with `--device nvidia.com/gpu=all` from nvlaunch's spec."""
    keys = (("podman", "podman run --rm --network none (plain)"),
            ("podman-cdi", f"podman run --rm --network none --device {CDI_ALL} (nvlaunch CDI spec)"))

    def skipped(why):
        out = []
        for key, label in keys:
            v = Variant(key, label, ["true"], kind="podman")
            v.available, v.reason = False, why
            out.append(v)
        setup.notes.append(f"podman rows skipped: {why}")
        return out
    if shutil.which("podman") is None:
        return skipped("podman not installed")
    d = os.path.join(setup.work, "podman")
    spec_dir = os.path.join(d, "cdi")
    os.makedirs(spec_dir, exist_ok=True)
    nvl, _ = nvlaunch_cmd()
    proc = sh(nvl + ["cdi", "generate", "--output", os.path.join(spec_dir, "nvlaunch.json")],
              env={**os.environ, **host.env()}, cwd=REPO)
    if proc.returncode != 0:
        return skipped(f"nvlaunch cdi generate: {first_line(proc.stderr)}")
    pre, why = _cdi_namespace(spec_dir)
    if pre is None:
        return skipped(why)
    tar = os.path.join(d, "rootfs.tar")
    subprocess.run(["tar", "-C", setup.rootfs, "-cf", tar, "."], check=True)
    # rlimits: podman asks RLIMIT_NOFILE/NPROC above this machine's hard limits (no
    # CAP_SYS_RESOURCE here); lower ones are fine.  runc: crun refuses hybrid cgroups.
    last = ""
    for driver in ("overlay", "vfs"):
        base = ["podman", "--root", os.path.join(d, f"root-{driver}"), "--runroot", os.path.join(d, "run"),
                "--storage-driver", driver, "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "none"]
        imp = sh(base + ["import", tar, "localhost/nvlaunch-bench:latest"])
        if imp.returncode != 0:
            last = f"{driver}: podman import: {first_line(imp.stderr)}"
            continue
        run = base + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                      "--ulimit", "nproc=1024:1024"]
        out = [Variant("podman", keys[0][1], run + ["localhost/nvlaunch-bench", "/bin/true"], kind="podman",
                       preexec=pre,
                       note=f"storage driver {driver}; same private mount namespace as the CDI row"),
               Variant("podman-cdi", keys[1][1],
                       run + ["--device", CDI_ALL, "localhost/nvlaunch-bench", "/bin/true"], kind="podman",
                       preexec=pre, note=f"storage driver {driver}; spec from `nvlaunch cdi generate`")]
        probe = out[0].once(99_998, os.environ.copy())
        if probe[1] == 0:
            return out
        last = f"{driver}: podman run: {first_line(probe[2])}"
    return skipped(last)


# ---------------------------------------------------------------------------------- report

def fmt(x, digits=1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(a, b) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


def markdown(res: dict) -> str:
    m = res["machine"]
    out = [f"# nvlaunch container setup latency ({res['mode']}, {res['date']})", "",
           f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, kernel {m['kernel']}, {m['os']}, "
           f"cgroup {m['cgroup']}; python {m['python']}; {m['bwrap']}; {m['runc']}; {m['crun']}; "
           f"nvlaunch tree {m.get('tree') or 'unknown'}.", "",
           f"Each row: {res['iterations']} interleaved launches of /bin/true after {res['warmup']} warm-up "
           f"round(s), from fork to the launcher reaped.  nvlaunch ran as `{res['nvlaunch']}`.", ""]
    rows = {r["key"]: r for r in res["variants"]}
    runc = rows.get("runc", {}).get("median_ms")
    out += ["| variant | as | median ms | p90 ms | n | × bwrap (same binds) | × runc |",
            "|---|---|--:|--:|--:|--:|--:|"]
    for r in res["variants"]:
        if not r["available"]:
            out.append(f"| {r['label']} | {r['user']} | unavailable | | | | |")
            continue
        bw = rows.get(r.get("bwrap_ref") or "", {}).get("median_ms")
        out.append(f"| {r['label']} | {r['user']} | {fmt(r['median_ms'])} | {fmt(r['p90_ms'])} | {r['n']}"
                   f"{' (' + str(r['failed']) + ' failed)' if r['failed'] else ''} | "
                   f"{ratio(r['median_ms'], bw) if bw else '–'} | {ratio(r['median_ms'], runc)} |")
    un = [r for r in res["variants"] if not r["available"]]
    if un:
        out += ["", "Unavailable: " + "; ".join(f"{r['label']}: {r['reason']}" for r in un)]
    if res.get("notes"):
        out += ["", "Notes: " + " ".join(f"{n}." if not n.endswith(".") else n for n in res["notes"])]

    out += peers_table(res)
    ph = res.get("phases", {})
    if ph:
        names = [p for p in PHASES] + [AFTER, "total", "untimed total"]
        out += ["", "## nvlaunch per phase (median ms, from its `nvlaunch-timings:` line)", "",
                "From twin runs with NVLAUNCH_TIMINGS=1, interleaved with the untimed ones of the table "
                "above; \"total\" is theirs, \"untimed total\" the table's (the difference is what "
                "`--timings` itself costs).", "",
                "| variant | as | " + " | ".join(names) + " |", "|---|---|" + "--:|" * len(names)]
        for key, d in ph.items():
            r = rows[key]
            out.append(f"| {r['label']} | {r['user']} | "
                       + " | ".join(fmt(d.get(n), 2) for n in names) + " |")
        out += ["", "startup = fork/exec + interpreter start + `import nvlaunch.cli`; prepare = option "
                "parsing, the imports of `run`, driver/GPU discovery and the plan; namespaces = clone "
                "until PID 1 runs; mounts = tmpfs, overlay, /proc /sys /dev and every bind (the sum of "
                "the sub-phases below where nvlaunch reports them); init = environment; after init = "
                "fork+exec of the command, its exit, namespace teardown, reaping, the launcher's exit."]
        raw = res.get("raw_phases", {})
        if raw:
            names = []
            for d in raw.values():
                names += [k for k in d if k not in names]
            out += ["", "As printed by nvlaunch (median ms):", "",
                    "| variant | as | " + " | ".join(names) + " |", "|---|---|" + "--:|" * len(names)]
            for key, d in raw.items():
                r = rows[key]
                out.append(f"| {r['label']} | {r['user']} | "
                           + " | ".join(fmt(d.get(n), 2) for n in names) + " |")
    sp = res.get("prepare_split", {})
    if sp.get("available"):
        out += ["", f"### Inside prepare ({sp['gpus']} GPU, {sp['entries']} plan entries; fresh interpreter, "
                f"median of {sp['n']})", "", "| step | ms |", "|---|--:|"]
        out += [f"| {k} | {fmt(v, 2)} |" for k, v in sp["median_ms"].items()]
    for title, key in (("run --gpus all (1 GPU)", "importtime_gpu"), ("run --no-gpu", "importtime_nogpu")):
        it = res.get(key, {})
        if it.get("available"):
            out += ["", f"### Imports of `{title}` (-X importtime, median of {it['runs']}; "
                    f"all imports {fmt(it['total_self_ms'], 1)} ms)", "",
                    "| top-level import | cumulative µs | | top self time | µs |", "|---|--:|---|---|--:|"]
            a, b = it["top_level_cumulative_us"], it["top_self_us"]
            for i in range(max(len(a), len(b))):
                x = a[i] if i < len(a) else ["", ""]
                y = b[i] if i < len(b) else ["", ""]
                out.append(f"| {x[0]} | {x[1]} | | {y[0]} | {y[1]} |")
    sc = res.get("scaling", {})
    if sc.get("gpus"):
        out += ["", "## Scaling (nvlaunch run, root, interleaved)", "",
                "| GPUs (capabilities all) | median ms | p90 ms | n | mounts ms |", "|--:|--:|--:|--:|--:|"]
        out += [f"| {r['gpus']} | {fmt(r['median_ms'])} | {fmt(r['p90_ms'])} | {r['n']} | "
                f"{fmt(r.get('mounts_ms'), 2)} |"
                for r in sc["gpus"]]
    if sc.get("capabilities"):
        out += ["", "| capabilities (1 GPU) | median ms | p90 ms | n | prepare ms | mounts ms |",
                "|---|--:|--:|--:|--:|--:|"]
        out += [f"| {r['capabilities']} | {fmt(r['median_ms'])} | {fmt(r['p90_ms'])} | {r['n']} | "
                f"{fmt(r.get('prepare_ms'), 2)} | {fmt(r.get('mounts_ms'), 2)} |" for r in sc["capabilities"]]
    if sc.get("concurrent"):
        out += ["", "| started at once | count | median wall ms (all done) | per launch ms | reps | failed |",
                "|---|--:|--:|--:|--:|--:|"]
        for c in sc["concurrent"]:
            if c.get("available"):
                out.append(f"| {c['label']} ({c['user']}) | {c['count']} | {fmt(c['median_wall_ms'])} | "
                           f"{fmt(c['per_launch_ms'], 2)} | {c['reps']} | {c['failed']} |")
            else:
                out.append(f"| {c.get('label', '?')} | | unavailable | | | |")
    lc = res.get("ldcache", {})
    if lc.get("available"):
        out += ["", f"## ld.so.cache, {lc['entries']} entries ({lc['bytes']} bytes), in process", "",
                f"parse: median {lc['parse_median_ms']:.3f} ms, p90 {lc['parse_p90_ms']:.3f} ms "
                f"(n={lc['n']}); "
                f"build: median {lc['build_median_ms']:.3f} ms."]
    if res.get("failed_sections"):
        out += ["", "Sections that could not run: " + "; ".join(res["failed_sections"])]
    tg = res.get("targets")
    if isinstance(tg, list) and tg:
        out += ["", "## Targets (informational: never a failing exit)", "",
                "| what | figure (medians) | goal | target |", "|---|---|---|---|"]
        out += [f"| {t['what']} | {t['figure']} | {t['goal']} | {t['target']} |" for t in tg]
    return "\n".join(out) + "\n"


def targets(res: dict) -> list:
    """Each target: what, figure, goal, target ("met", "missed", "not measured", or "–" where
    the row is there to be read, with no goal).  Informational: never an exit status."""
    rows = {r["key"]: r for r in res["variants"]}
    out = []

    def get(k):
        r = rows.get(k)
        return r["median_ms"] if r and r["available"] else None

    def ratio_target(what, a, b, limit, goal=None, missing="not measured"):
        if a and b:
            out.append({"what": what, "figure": f"{a:.1f} / {b:.1f} ms = {a / b:.2f}×",
                        "goal": goal or f"≤ {limit}×", "target": "met" if a / b <= limit else "missed"})
        else:
            out.append({"what": what, "figure": missing, "goal": goal or f"≤ {limit}×",
                        "target": "not measured"})
    u = res.get("user")
    hg = f"@{u}" if u and f"headline@{u}" in rows else ""
    ratio_target(f"HEADLINE: nvlaunch run --gpus all (default capabilities) as {u if hg else 'root'} "
                 "/ bwrap, same binds", get(f"headline{hg}"), get(f"bwrap-default{hg}"), 3)
    for suffix, who in (("", "root"), (f"@{u}" if u else None, u)):
        if suffix is None:
            continue
        for n in (1, 8):
            ratio_target(f"nvlaunch run --capabilities all, {n} GPU(s), as {who} / bwrap, same binds",
                         get(f"nvlaunch-{n}gpu{suffix}"), get(f"bwrap-{n}gpu{suffix}"), 2)
    ratio_target("runc lifecycle + nvlaunch hook / plain runc lifecycle", get("lc-hook"), get("lc-runc"), 1.5)
    a, b, c = get("lc-hook"), get("lc-nvidia"), get("lc-runc")
    if a and b and c and b - c > 0:
        out.append({"what": "nvlaunch hook's added ms / NVIDIA CDI runtime's added ms (over plain runc)",
                    "figure": f"{a - c:.1f} / {b - c:.1f} ms = {(a - c) / (b - c):.2f}",
                    "goal": "≤ 0.5", "target": "met" if (a - c) / (b - c) <= 0.5 else "missed"})
    else:
        out.append({"what": "nvlaunch hook's added ms / NVIDIA CDI runtime's added ms", "goal": "≤ 0.5",
                    "figure": "NVIDIA's runtime or the hook unavailable", "target": "not measured"})
    ratio_target("runc run + nvlaunch hook / runc run (one `runc run`)", get("runc-hook"), get("runc"), 1.5)
    # What bounds the two targets above, from the same run: the added ms of a hook that
    # only starts the interpreter, and of nvlaunch's hook with nothing to do, each against
    # NVIDIA's added ms; and `run` with no GPU work at all against the headline's bwrap.
    nvidia, plain = get("lc-nvidia"), get("lc-runc")
    for key, what in (("lc-hook-python", "bound: a `python -I -S -c pass` hook's added ms"),
                      ("lc-hook-void", "bound: nvlaunch's hook with nothing to do, added ms")):
        hook = get(key)
        if hook and nvidia and plain and nvidia - plain > 0:
            out.append({"what": f"{what} / NVIDIA CDI runtime's added ms",
                        "figure": f"{hook - plain:.1f} / {nvidia - plain:.1f} ms = "
                                  f"{(hook - plain) / (nvidia - plain):.2f}",
                        "goal": "(what a Python hook starts from)", "target": "–"})
    gate = get("lc-gate-void")
    if gate and nvidia and plain and nvidia - plain > 0:
        out.append({"what": "nvlaunch's hooks.d entry (the void gate), nothing to do, added ms / NVIDIA CDI "
                            "runtime's added ms",
                    "figure": f"{gate - plain:.1f} / {nvidia - plain:.1f} ms = "
                              f"{(gate - plain) / (nvidia - plain):.2f}",
                    "goal": "(every container under podman or CRI-O)", "target": "–"})
    a, b = get(f"nvlaunch-nogpu{hg}"), get(f"bwrap-default{hg}")
    if a and b:
        out.append({"what": f"bound: nvlaunch run --no-gpu as {u if hg else 'root'} / the headline's bwrap",
                    "figure": f"{a:.1f} / {b:.1f} ms = {a / b:.2f}×",
                    "goal": "(no GPU work at all)", "target": "–"})
    for key, what, goal in (("nvlaunch-ld", "nvlaunch run", 2.0), ("lc-hook-ld", "runc + nvlaunch hook", 2.0),
                            ("lc-nvidia-ld", "NVIDIA CDI runtime", None)):
        lo, hi = get(f"{key}{LD_SIZES[0]}"), get(f"{key}{LD_SIZES[-1]}")
        if lo and hi:
            d = hi - lo
            out.append({"what": f"{what}: ld.so.cache {LD_SIZES[-1]:,} entries against {LD_SIZES[0]}",
                        "figure": f"{hi:.1f} − {lo:.1f} = {d:+.1f} ms",
                        "goal": f"≤ {goal:g} ms" if goal else "(yardstick)",
                        "target": ("met" if d <= goal else "missed") if goal else "–"})
        else:
            out.append({"what": f"{what}: ld.so.cache {LD_SIZES[-1]:,} against {LD_SIZES[0]}",
                        "figure": "unavailable", "goal": f"≤ {goal:g} ms" if goal else "(yardstick)",
                        "target": "not measured" if goal else "–"})
    a, b = get("podman-cdi"), get("podman")
    out.append({"what": "podman --device nvidia.com/gpu=all (nvlaunch CDI spec) against plain podman",
                "figure": f"{a:.1f} − {b:.1f} = {a - b:+.1f} ms ({a / b:.2f}×)" if a and b else "unavailable",
                "goal": "(informational)", "target": "–" if a and b else "not measured"})
    a, b = get("nvlaunch-16gpu"), get("nvlaunch-1gpu")
    out.append({"what": "GPU count: nvlaunch run, 16 GPUs / 1 GPU (capabilities all, root)",
                "figure": f"{a:.1f} / {b:.1f} ms = {a / b:.2f}×" if a and b else "unavailable",
                "goal": "(flatness, informational)", "target": "–" if a and b else "not measured"})
    for c in res.get("scaling", {}).get("concurrent", []) if isinstance(res.get("scaling"), dict) else []:
        if c.get("available"):
            total = c["count"] * c["reps"]
            out.append({"what": f"{c['count']} launches at once: {c['label']} ({c['user']})",
                        "figure": f"{total - c['failed']} of {total} succeeded",
                        "goal": "all succeed", "target": "met" if c["failed"] == 0 else "missed"})
    lc = res.get("ldcache", {})
    if lc.get("available"):
        out.append({"what": "ld.so.cache read, 1,000 entries, in process",
                    "figure": f"{lc['parse_median_ms']:.3f} ms median", "goal": "well under 1 ms (< 0.5)",
                    "target": "met" if lc["parse_median_ms"] < 0.5 else "missed"})
    return out


def peers_table(res: dict) -> list:
    """The OCI lifecycle rows and podman: each one's added ms over its plain counterpart."""
    rows = {r["key"]: r for r in res["variants"]}

    def get(k):
        r = rows.get(k)
        return r["median_ms"] if r and r["available"] else None
    lines = []
    pairs = [("lc-runc", None), ("lc-hook", "lc-runc"), ("lc-nvidia", "lc-runc"),
             ("lc-hook-true", "lc-runc"), ("lc-hook-python", "lc-runc"), ("lc-hook-void", "lc-runc"),
             ("lc-gate-void", "lc-runc")]
    for n in LD_SIZES:
        pairs += [(f"lc-hook-ld{n}", "lc-runc"), (f"lc-nvidia-ld{n}", "lc-runc")]
    pairs += [(f"nvlaunch-ld{n}", f"nvlaunch-ld{LD_SIZES[0]}") for n in LD_SIZES]
    pairs += [("podman", None), ("podman-cdi", "podman")]
    for key, ref in pairs:
        if key not in rows:
            continue
        a, b = get(key), get(ref) if ref else None
        if a is None:
            lines.append(f"| {rows[key]['label']} | unavailable | | | |")
            continue
        lines.append(f"| {rows[key]['label']} | {fmt(a)} | {rows[ref]['label'] if ref else '–'} | "
                     f"{f'{a - b:+.1f}' if b else '–'} | {ratio(a, b) if b else '–'} |")
    if not lines:
        return []
    return ["", "## Lifecycles, NVIDIA's CDI runtime, podman (median ms, same interleaved run)", "",
            "| variant | median ms | against | added ms | ratio |", "|---|--:|---|--:|--:|"] + lines


# ---------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI: 7 runs per variant, no extended scaling")
    ap.add_argument("-n", "--iterations", type=int, help="runs per variant (default 31, quick 7)")
    ap.add_argument("--user", default=None,
                    help=f"run the rootless variants also as this user via setpriv (default {DEFAULT_USER} "
                         "if it exists; '' for none)")
    ap.add_argument("--json-out", default=DEFAULT_JSON)
    ap.add_argument("--md-out", default=DEFAULT_MD)
    ap.add_argument("--workdir", help="where to build the trees (default: a new dir in /tmp, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--only", metavar="REGEX",
                    help="run only the variants whose key or label matches (and none of the extra sections)")
    args = ap.parse_args(argv)

    quick = args.quick
    n = args.iterations or (7 if quick else 31)
    warmup = 1 if quick else 2
    user = None
    uname = DEFAULT_USER if args.user is None else args.user
    if uname and os.geteuid() == 0:
        try:
            user = pwd.getpwnam(uname)
        except KeyError:
            if args.user:
                print(f"latency: no user {uname!r}; rootless variants run as root only", file=sys.stderr)
    t_start = time.monotonic()
    info = machine_info()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']}, kernel {info['kernel']}, "
          f"{info['os']}, cgroup {info['cgroup']}", flush=True)
    nvl, nvl_shown = nvlaunch_cmd()
    work = args.workdir or tempfile.mkdtemp(prefix="nvlaunch-bench-")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    gpu_counts = [1, 8, 16] if quick or args.no_scaling else [1, 2, 4, 8, 16]
    try:
        setup = Setup(work, gpu_counts, user)
        # Without PYTHONDONTWRITEBYTECODE: nvlaunch's modules run from up-to-date .pyc files
        # (written by the warm-up runs), as after an install; with it, a module edited since
        # its .pyc was written is compiled again on every launch.
        base_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("NVLAUNCH_", "NVIDIA_")) and k != "PYTHONDONTWRITEBYTECODE"}
        if "PYTHONDONTWRITEBYTECODE" in os.environ:
            setup.notes.append("PYTHONDONTWRITEBYTECODE was set: removed for the launches so that "
                               "nvlaunch runs from current .pyc files")
        pth = _editable_pth()
        if pth:
            setup.notes.append(f"this venv has an editable install whose {pth} is imported by every "
                               "interpreter start (see `python -c pass` against `python -I -S -c pass`)")
        variants = with_timed_twins(build_variants(setup, user, nvl) + peer_variants(setup, nvl, user)
                                    + baselines(nvl))
        if user is not None:   # the user's runs need a HOME of their own
            for v in variants:
                if v.group == user.pw_name:
                    v.env.setdefault("HOME", user.pw_dir)
                    v.env.setdefault("USER", user.pw_name)
                    v.env.setdefault("LOGNAME", user.pw_name)
                    v.env.setdefault("XDG_RUNTIME_DIR", None)   # root's, if set: not the user's
        if args.only:
            pick = re.compile(args.only)
            variants = [v for v in variants if pick.search(v.key) or pick.search(v.label)]
        for v in variants:
            v.example = v.argv(0)

        def progress(i, total):
            if i == total or i % max(1, total // 4) == 0:
                print(f"  main: round {i}/{total} ({time.monotonic() - t_start:.0f} s)", flush=True)
        print(f"main: {len([v for v in variants if v.available])} variants x {n} runs, interleaved",
              flush=True)
        run_interleaved(variants, n, warmup, base_env, progress)

        res: dict = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                     "mode": "quick" if quick else "full",
                     "machine": info, "iterations": n, "warmup": warmup, "nvlaunch": nvl_shown,
                     "user": user.pw_name if user else None, "workdir": work}
        res["variants"] = []
        res["timed_runs"] = []
        for v in variants:
            s = v.summary()
            s["bwrap_ref"] = v.bwrap_ref
            (res["timed_runs"] if v.twin_of else res["variants"]).append(s)
        res["phases"] = {}
        untimed = {v.key: v for v in variants if not v.twin_of}
        for v in variants:
            if v.twin_of and v.phases:
                keys = [k for k in (*PHASES, AFTER, "total") if any(k in p for p in v.phases)]
                d = {k: r3(med([p[k] for p in v.phases if k in p])) for k in keys}
                d["untimed total"] = untimed[v.twin_of].summary()["median_ms"]
                res["phases"][v.twin_of] = d
                names = []
                for p in v.raw_phases:
                    names += [k for k in p if k not in names]
                if set(names) - set(PHASES):
                    res.setdefault("raw_phases", {})[v.twin_of] = {
                        k: r3(med([p[k] for p in v.raw_phases if k in p])) for k in names}

        if not args.only:
            print("inside prepare, imports ...", flush=True)
            guarded(res, "prepare_split", lambda: prepare_split(setup, 1, 5 if quick else 15))
            env1 = {**base_env, **setup.host_env(1)}
            guarded(res, "importtime_gpu", lambda: import_profile(
                nvl + ["run", "--gpus", "all", "--capabilities", "all", setup.rootfs, "/bin/true"], env1,
                3 if quick else 9))
            guarded(res, "importtime_nogpu", lambda: import_profile(
                nvl + ["run", "--no-gpu", setup.rootfs, "/bin/true"], env1, 3 if quick else 9))
            guarded(res, "scaling", lambda: scaling_section(setup, variants, nvl, gpu_counts, n, warmup,
                                                             base_env, quick or args.no_scaling, quick))
            guarded(res, "ldcache", lambda: ldcache_bench(200))
        res["notes"] = setup.notes + [
            "bwrap 0.8 has no overlay and cannot make mount points in a read-only bind: each bwrap run gets "
            "`--bind ROOT /` of a fresh hard-linked clone of the rootfs on a tmpfs (made and removed "
            "untimed), "
            "so it makes every mount point and --symlink itself, as nvlaunch does in its tmpfs layer; the "
            "\"pre-made\" row is the floor where they already exist; the /proc/driver/nvidia copies and the "
            "merged ld.so.cache that nvlaunch writes are bound from files prepared beforehand",
            "bwrap and unshare make a user namespace also as root (--unshare-user, --user); nvlaunch as root "
            "does not",
            "runc/crun: `runc spec` defaults minus the network namespace, writable rootfs copy, v1 cgroups "
            "(hybrid host)"]
        guarded(res, "targets", lambda: targets(res))
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        md = markdown(res)
        print()
        print(md)
        for path, text in ((args.json_out, json.dumps(res, indent=2) + "\n"), (args.md_out, md)):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
        print(f"wrote {args.json_out}" + (f" and {args.md_out}" if args.md_out else "") +
              f" ({res['elapsed_s']} s)")
    finally:
        fast = getattr(locals().get("setup"), "fast", None)
        if not args.keep:
            if fast and fast != work:
                shutil.rmtree(fast, ignore_errors=True)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
