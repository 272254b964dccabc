"""What every `nvlaunch setup SYSTEM` shares: the option table, the writer that merges and
never clobbers (atomic writes, a .bak of what it replaces, --dry-run prints instead), and
the hook invocation each system's entry runs (oci.hooks)."""
from __future__ import annotations

import os
import sys

from nvlaunch.core import errors as E
from nvlaunch.core.files import write_atomic
from nvlaunch.oci.hooks import Invocation, invocation

SETUP_OPTS = {
    "--dry-run": ("dry_run", False, False), "--config": ("config", True, False),
    "--hook-path": ("hook_path", True, False), "--wrapper": ("wrapper", True, False),
    "--runtime-name": ("runtime_name", True, False), "--no-cgroups": ("no_cgroups", False, False),
    "--help": ("help", False, False), "-h": ("help", False, False),
}
RUNTIME_NAME = "nvlaunch"


class Writer:
    """Writes files atomically, or with dry_run only prints what it would write."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.written: list[str] = []

    def write(self, path: str, text: str, mode: int = 0o644, backup: bool = True) -> None:
        if self.dry_run:
            self.out.write(f"--- would write {path} (mode {mode:04o}):\n{text}")
            if not text.endswith("\n"):
                self.out.write("\n")
            return
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        if backup and os.path.exists(path):
            with open(path, "rb") as f:
                old = f.read()
            if old == text.encode():
                self.out.write(f"{path}: unchanged\n")
                return
            write_atomic(path + ".bak", old, os.stat(path).st_mode & 0o7777)
        write_atomic(path, text.encode(), mode)
        self.written.append(path)
        self.out.write(f"wrote {path}\n")


def hook(gopts: dict, opts: dict) -> Invocation:
    """How this system's entry runs nvlaunch: --hook-path, the host roots given to setup,
    and NVLAUNCH_NO_CGROUPS=1 for --no-cgroups."""
    inv = invocation(opts.get("hook_path"), gopts)
    if opts.get("no_cgroups") and "NVLAUNCH_NO_CGROUPS=1" not in inv.env:
        inv = Invocation(inv.path, inv.argv, inv.env + ("NVLAUNCH_NO_CGROUPS=1",))
    return inv


def settings(inv: Invocation) -> list[str]:
    """The NVLAUNCH_* part of a hook's environment (what a daemon must be given itself
    where its runtime entries carry no environment)."""
    return [e for e in inv.env if e.startswith("NVLAUNCH_")]


def executable(inv: Invocation, what: str) -> tuple[str, list[str]]:
    """(program, arguments before nvlaunch's own) for an entry that carries no
    environment (docker's runtimes, containerd's wrapper)."""
    if any(e.startswith("PYTHONPATH=") for e in inv.env):
        raise E.UsageError(f"{what}: cannot tell where the nvlaunch executable is",
                           hint="install nvlaunch (pip install .), put it on PATH, or pass "
                                "--hook-path")
    return inv.path, list(inv.argv[1:])
