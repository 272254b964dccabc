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
        if not path or path.endswith("/") or os.path.isdir(path):
            raise E.UsageError(f"{E.quote(path)}: not a file name (it names a directory)")
        made = make_dirs(os.path.dirname(os.path.abspath(path)))
        try:
            if backup and os.path.exists(path):
                with open(path, "rb") as f:
                    old = f.read()
                if old == text.encode():
                    self.out.write(f"{path}: unchanged\n")
                    return
                write_atomic(path + ".bak", old, os.stat(path).st_mode & 0o7777)
            write_atomic(path, text.encode(), mode)
        except OSError as err:
            remove_dirs(made)
            raise E.UsageError(f"{E.quote(path)}: {err.strerror or err}", errno=err.errno) from None
        self.written.append(path)
        self.out.write(f"wrote {path}\n")


def make_dirs(directory: str) -> list[str]:
    """os.makedirs(directory), returning the directories it made (deepest last), so that
    a write that fails afterwards can remove them again (remove_dirs)."""
    missing = []
    d = directory
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    made = []
    try:
        for d in reversed(missing):
            os.mkdir(d, 0o755)
            made.append(d)
    except OSError as err:
        remove_dirs(made)
        raise E.UsageError(f"cannot create {E.quote(d)}: {err.strerror or err}",
                           errno=err.errno) from None
    return made


def remove_dirs(made: list[str]) -> None:
    """Undo make_dirs(): the directories it made, deepest first, while they are empty."""
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            return


def hook_path_opt(opts: dict) -> str | None:
    """--hook-path, where given; an empty one is an error, not the default."""
    if "hook_path" in opts and not opts["hook_path"]:
        raise E.UsageError("--hook-path '': want the absolute path of the nvlaunch executable")
    return opts.get("hook_path")


def read_text(path: str) -> str | None:
    """A configuration file's text, None where it does not exist; UsageError naming the
    file when it cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise E.UsageError(f"{E.quote(path)}: {err.strerror or err}", errno=err.errno) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise E.UsageError(f"{E.quote(path)}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def hook(gopts: dict, opts: dict) -> Invocation:
    """How this system's entry runs nvlaunch: --hook-path, the host roots given to setup,
    and NVLAUNCH_NO_CGROUPS=1 for --no-cgroups."""
    inv = invocation(hook_path_opt(opts), gopts)
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
