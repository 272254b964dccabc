"""`nvlaunch setup slurm [--config FILE] [--hook-path PATH] [--dry-run]`: the oci.conf that
makes `srun --container=BUNDLE` start through `nvlaunch run --bundle`, with the step's GPUs.

What Slurm 22.05 (22.05.8, measured) accepts and does, which decides every line:
- oci.conf knows ContainerPath, CreateEnvFile (a boolean), RunTimeQuery, RunTimeCreate,
  RunTimeStart, RunTimeKill, RunTimeDelete, RunTimeRun; newer keys (IgnoreFileConfigJson,
  EnvExclude, RunTimeEnvExclude, MountSpoolDir, CreateEnvFile=newline) are refused.
- RunTimeRun excludes RunTimeCreate/RunTimeStart; Query, Kill and Delete must still be set.
- Replacements: %b %r %e %u %n %j %s %t and %%; %@ expands to nothing; %U, %m and %p make
  slurmstepd die (fatal "unexpected replacement character") when the step starts.
- %b is the task's spool directory, holding Slurm's rewrite of the bundle's config.json:
  root.path absolute, process.args the srun command, process.env the step's environment
  (without SLURM_STEP_GPUS or CUDA_VISIBLE_DEVICES, which 22.05 sets later).
- The runtime runs as the job's user in the step's cgroup, with a minimal environment
  (PATH, SLURM_CONF, SLURMD_NODENAME): hence the absolute nvlaunch path, the host roots as
  options, and `--gpus all`, which inside an allocation means its GPUs (here through the
  device cgroup, i.e. with ConstrainDevices=yes: docs/cluster.md).
- In RunTimeRun mode the task is nvlaunch itself, so Slurm's own signalling reaches it
  (and nvlaunch forwards to the container); Query reports "stopped" so that the step's
  cleanup runs only Delete, which has nothing to remove.
"""
from __future__ import annotations

import os
import shlex

from nvlaunch.core import errors as E
from nvlaunch.host.view import HostView
from nvlaunch.setup.common import Writer, executable, hook, read_text, settings

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
MARK = "# nvlaunch setup slurm"
# Query's answer, as slurmstepd parses it (JSON with a status); \042 is '"', since the
# value is double-quoted in oci.conf and may hold no '"' itself.
QUERY = "printf '{\\042status\\042:\\042stopped\\042}'"
KEYS = ("RunTimeQuery", "RunTimeKill", "RunTimeDelete", "RunTimeRun", "RunTimeCreate",
        "RunTimeStart")


def default_config(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return os.path.join(os.path.dirname(environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF), "oci.conf")


def _word(arg: str) -> str:
    """One shell word for a RunTimeRun line: quoted for sh, '%' doubled for Slurm."""
    return shlex.quote(arg).replace("%", "%%")


def run_line(gopts: dict, opts: dict) -> str:
    """The RunTimeRun command: `[env NVLAUNCH_*=...] NVLAUNCH [roots] run --gpus all --bundle %b`."""
    inv = hook(gopts, opts)
    program, args = executable(inv, "setup slurm")
    host = HostView.from_options(gopts)
    words = [program, *args]
    env = [e for e in settings(inv) if e.split("=", 1)[0] not in
           ("NVLAUNCH_DRIVER_ROOT", "NVLAUNCH_DEV_ROOT", "NVLAUNCH_PROC_ROOT")]
    for flag, value in (("--driver-root", host.driver_root), ("--dev-root", host.dev_root),
                        ("--proc-root", host.proc_root)):
        if value != "/":
            words += [flag, value]
    words += ["run", "--gpus", "all", "--bundle"]
    line = " ".join(_word(w) for w in (["env", *env] if env else []) + words) + " %b"
    if '"' in line or "\n" in line:
        raise E.UsageError(f"setup slurm: {E.quote(line)} cannot be written as an oci.conf value "
                           "(it holds '\"' or a newline)", hint="pass --hook-path")
    return line


def oci_conf_text(gopts: dict, opts: dict, old: str | None = None) -> str:
    """nvlaunch's RunTime* lines; other settings of an existing oci.conf are kept (its own
    RunTime* lines are commented out, since Slurm takes one set)."""
    ours = [f"{MARK}: srun --container=BUNDLE runs `nvlaunch run --bundle` with the step's GPUs",
            "# (Slurm 22.05 and newer; GPU isolation needs ConstrainDevices=yes in cgroup.conf)",
            f'RunTimeQuery="{QUERY}"',
            'RunTimeKill="true"',
            'RunTimeDelete="true"',
            f'RunTimeRun="{run_line(gopts, opts)}"']
    kept: list[str] = []
    for line in (old or "").splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if line.startswith(MARK) or line.startswith("# (Slurm 22.05 and newer;"):
            continue
        if key in (k.lower() for k in KEYS):
            if not line.startswith("RunTime") or _is_ours(line):
                continue
            kept.append(f"# (replaced by nvlaunch) {line}")
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept + ([""] if kept else []) + ours) + "\n"


def _is_ours(line: str) -> bool:
    return line.startswith(("RunTimeQuery=\"printf '{\\042status", 'RunTimeKill="true"',
                            'RunTimeDelete="true"')) or (line.startswith("RunTimeRun=")
                                                         and " run --gpus all --bundle %b" in line)


def setup_slurm(gopts: dict, opts: dict, w: Writer) -> int:
    path = opts.get("config") or default_config()
    w.write(path, oci_conf_text(gopts, opts, read_text(path)))
    return 0
