"""A hook's time limit, and signals that end it the normal way.

A runtime waits for its hooks; one that hangs hangs the container's start, and runc's
own hook `timeout` only kills the hook process.  So a hook bounds itself: after
`seconds` (NVLAUNCH_HOOK_TIMEOUT, default HOOK_TIMEOUT_S) SIGALRM, and SIGTERM, SIGINT
or SIGHUP from whoever gives up on it, raise Interrupted where the hook is, so its
error path runs as for any failure: the injection is undone, the cgroup rules removed,
one error line printed.  Every blocking call of nvlaunch retries EINTR only after
running Python's handlers (PEP 475; _ns does the same), so the exception gets through.
"""
from __future__ import annotations

import _signal as signal

from nvlaunch.core.errors import NvlaunchError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

HOOK_TIMEOUT_S = 30
ENV_TIMEOUT = "NVLAUNCH_HOOK_TIMEOUT"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}


class Interrupted(NvlaunchError):
    """A signal or the time limit ended the work."""


def timeout_from(environ: Mapping[str, str]) -> int:
    raw = environ.get(ENV_TIMEOUT)
    if raw is None or raw == "":
        return HOOK_TIMEOUT_S
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 86400:
        raise UsageError(f"{ENV_TIMEOUT}={raw!r}: expected whole seconds, 1 to 86400")
    return int(raw)


def bound(seconds: int) -> None:
    """From now on: SIGALRM after `seconds`, and each of SIGNALS, raise Interrupted."""
    def handler(signum: int, _frame: object) -> None:
        if signum == signal.SIGALRM:
            raise Interrupted(f"gave up after {seconds} s (the limit is {ENV_TIMEOUT})")
        raise Interrupted(f"stopped by {_NAMES.get(signum, signum)}")
    for s in SIGNALS:
        signal.signal(s, handler)
    signal.alarm(seconds)


def unbound() -> None:
    signal.alarm(0)
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
