"""Signals of `run`: the ones P forwards to PID 1 and PID 1 to the command, and the
forwarder that does it.  `_signal` is the C module: `signal` would import enum (2 ms a
launch)."""
from __future__ import annotations

import _signal as signal
import os

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


class Forwarder:
    """Handlers that forward FORWARDED_SIGNALS to `pid`: P's to PID 1, and PID 1's to the
    command, installed in PID 1 first thing after clone.

    The kernel drops a signal sent to a pid namespace's init unless init has a handler
    for it, so a handler that only came after the command started would lose the signals
    sent in between (the command may already be running and visible).  Until the target
    is known (start()) they are held, then forwarded in order."""

    def __init__(self, pid: int | None = None):
        self.pid = pid
        self.held: list[int] = []
        self.old = {s: signal.signal(s, self.handle) for s in FORWARDED_SIGNALS}

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def handle(self, signum, _frame):
        if self.pid is None:
            self.held.append(signum)
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def start(self, pid: int) -> None:
        self.pid = pid
        held, self.held = self.held, []
        for signum in held:
            self.handle(signum, None)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
