"""`nvlaunch setup {runc|podman|crio|docker|containerd|lxc|slurm} [OPTIONS]`: install nvlaunch
into a container system.  Existing configuration is merged, never clobbered.

    podman      an OCI hooks.d file (1.0.0 schema), /usr/share/containers/oci/hooks.d/nvlaunch.json
    crio        the same file in /etc/containers/oci/hooks.d/nvlaunch.json
    docker      runtime "nvlaunch" merged into /etc/docker/daemon.json, and
                /usr/local/bin/nvidia-container-runtime-hook (--bin-dir DIR) for --gpus
                ({"path": NVLAUNCH, "runtimeArgs": ["runtime"]}: dockerd wraps a runtime with
                runtimeArgs in a script `PATH ARGS $@`, so runc's arguments follow "runtime")
    containerd  a marked block appended to /etc/containerd/config.toml that registers
                runtime "nvlaunch" (io.containerd.runc.v2 with BinaryName = a two-line
                wrapper /usr/local/bin/nvlaunch-runtime that runs `nvlaunch runtime "$@"`,
                since the runc shim passes no extra arguments); plain text, no TOML library
    runc        prints how to use the shim or the hook; with --config BUNDLE/config.json,
                adds the prestart hook to that config.json
    lxc         nvlaunch.frontends.lxc_hook.setup_lxc(args, dry_run, gopts)
    slurm       oci.conf beside slurm.conf ($SLURM_CONF, else /etc/slurm/slurm.conf):
                RunTimeRun = `nvlaunch run --gpus all --bundle %b` (setup/slurm.py)

Options:
    --dry-run            print what would be written and where; write nothing
    --config PATH        the file to write instead of the default
    --hook-path PATH     the nvlaunch executable the hook / runtime entry runs
                         (default: NVLAUNCH_HOOK_PATH, `nvlaunch` on PATH, sys.argv[0])
    --wrapper PATH       containerd: where the runtime wrapper goes
    --runtime-name NAME  docker/containerd: the runtime's name (default nvlaunch)
    --no-cgroups         hook env NVLAUNCH_NO_CGROUPS=1 (no device cgroup rules)
The hook's environment carries the host roots given to setup (--driver-root ... before
`setup`, or NVLAUNCH_*_ROOT), so a hook for a non-standard driver root needs no more.
"""
from __future__ import annotations

import sys

from nvlaunch.core import errors as E
from nvlaunch.core.argv import parse_command
from nvlaunch.setup.cdi import setup_cdi
from nvlaunch.setup.common import SETUP_OPTS, Writer
from nvlaunch.setup.containerd import setup_containerd
from nvlaunch.setup.docker import DOCKER_OPTS, DOCKER_USAGE, setup_docker
from nvlaunch.setup.hooks_d import setup_hooks_d
from nvlaunch.setup.lxc import setup_lxc
from nvlaunch.setup.runc import setup_runc
from nvlaunch.setup.slurm import setup_slurm

SETUP_USAGE = ("usage: nvlaunch setup {runc|podman|crio|docker|containerd|lxc|slurm} [--dry-run] "
               "[--config PATH] [--hook-path PATH] [--wrapper PATH] [--runtime-name NAME] "
               "[--no-cgroups]\n")
# system -> the function that installs nvlaunch there, with the shared options
SYSTEMS = {
    "runc": setup_runc,
    "podman": lambda gopts, opts, w: setup_hooks_d("podman", gopts, opts, w),
    "crio": lambda gopts, opts, w: setup_hooks_d("crio", gopts, opts, w),
    "docker": setup_docker,
    "containerd": setup_containerd,
    "slurm": setup_slurm,
}
TARGETS = tuple(SYSTEMS) + ("lxc",)


def cmd_setup(gopts: dict, args: list) -> int:
    if not args:
        raise E.UsageError(f"setup: need the system to set up, one of {', '.join(TARGETS)} "
                           "(see `nvlaunch setup --help`)")
    if args[0] in ("--help", "-h"):
        sys.stdout.write(SETUP_USAGE)
        return 0
    target, rest = args[0], args[1:]
    if target not in TARGETS:
        raise E.UsageError(f"setup: unknown system {E.quote(target)} (one of {', '.join(TARGETS)})")
    if target == "lxc":
        return setup_lxc(rest, gopts)
    if target == "podman" and "--cdi" in rest:
        # a CDI spec in /etc/cdi instead of the OCI hook
        return setup_cdi(rest, gopts)
    table, usage = (DOCKER_OPTS, DOCKER_USAGE) if target == "docker" else (SETUP_OPTS, SETUP_USAGE)
    parsed = parse_command(rest, table, f"setup {target}", usage)
    if parsed is None:
        return 0
    opts = parsed[0]
    return SYSTEMS[target](gopts, opts, Writer(bool(opts.get("dry_run"))))
