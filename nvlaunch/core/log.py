"""The one logger: debug lines on stderr and/or appended to a file, warnings always.

The `logging` module costs a hook more to import than its whole cgroup step, so this is
a few lines instead.  Off by default; on with `--debug` or NVLAUNCH_DEBUG=1 (stderr) and
NVLAUNCH_DEBUG_FILE=PATH (appended, with a timestamp: a runtime may not show a hook's
stderr, crun drops it by default).  Every module logs through `log`; the front end
that knows the options calls `log.configure()` once.
"""
from __future__ import annotations

import os
import sys
import time

ENV_DEBUG = "NVLAUNCH_DEBUG"
ENV_DEBUG_FILE = "NVLAUNCH_DEBUG_FILE"


def truthy(val: str | None) -> bool:
    return (val or "").strip().lower() in ("1", "true", "yes", "on")


class Log:
    def __init__(self) -> None:
        self.to_stderr = truthy(os.environ.get(ENV_DEBUG))
        self.path: str | None = os.environ.get(ENV_DEBUG_FILE) or None
        self.tag = "nvlaunch"
        self.t0 = time.monotonic()

    def configure(self, debug: bool = False, tag: str | None = None) -> None:
        """`debug` (the --debug option) turns stderr lines on; `tag` names the caller
        in each line ("hook", "lxc-hook")."""
        self.to_stderr = self.to_stderr or debug
        if tag:
            self.tag = f"nvlaunch: {tag}[{os.getpid()}]"

    @property
    def on(self) -> bool:
        return self.to_stderr or bool(self.path)

    def __call__(self, msg: str, file_only: bool = False) -> None:
        """A debug line (nothing when off)."""
        if not self.on:
            return
        self._emit(f"{self.tag} +{(time.monotonic() - self.t0) * 1000:.1f}ms: {msg}\n",
                   self.to_stderr and not file_only)

    debug = __call__

    def warning(self, msg: str) -> None:
        """Always on stderr; in the debug file too."""
        self._emit(f"nvlaunch: warning: {msg}\n", True)

    def _emit(self, line: str, stderr: bool) -> None:
        if stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line)
            except OSError:
                pass


log = Log()


ENV_STOP_AT = "NVLAUNCH_STOP_AT"
STOP_AT = os.environ.get(ENV_STOP_AT) or None


def checkpoint(phase: str) -> None:
    """NVLAUNCH_STOP_AT=PHASE, a test and debugging aid: at PHASE, say so on stderr
    ("nvlaunch: stopped at PHASE") and wait there until a signal ends the process, so
    that a test can kill nvlaunch at exactly that point (tests/security/test_kill_points.py)
    or a person can look at its state.  Phases: docs/security.md.  A hook gets it only
    from its own entry's env, never from a container."""
    if STOP_AT is not None and STOP_AT == phase:
        os.write(2, f"nvlaunch: stopped at {phase}\n".encode())
        while True:
            time.sleep(3600)
