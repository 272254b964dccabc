# The C module behind `signal`, which nvlaunch imports directly (`signal` imports enum,
# 2 ms a launch).  typeshed has no stub for it; this holds what nvlaunch uses.  Here the
# signals are plain ints: the Signals/Handlers enums are made by signal.py.
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_Handler = Callable[[int, FrameType | None], Any] | int | None

SIG_DFL: int
SIG_IGN: int
SIG_BLOCK: int
SIG_UNBLOCK: int
SIG_SETMASK: int
NSIG: int

SIGABRT: int
SIGALRM: int
SIGBUS: int
SIGCHLD: int
SIGCONT: int
SIGFPE: int
SIGHUP: int
SIGILL: int
SIGINT: int
SIGKILL: int
SIGPIPE: int
SIGQUIT: int
SIGSEGV: int
SIGSTOP: int
SIGTERM: int
SIGTSTP: int
SIGTTIN: int
SIGTTOU: int
SIGURG: int
SIGUSR1: int
SIGUSR2: int
SIGWINCH: int

def signal(signalnum: int, handler: _Handler, /) -> _Handler: ...
def getsignal(signalnum: int, /) -> _Handler: ...
def pthread_sigmask(how: int, mask: Iterable[int], /) -> set[int]: ...
def valid_signals() -> set[int]: ...
def set_wakeup_fd(fd: int, /, *, warn_on_full_buffer: bool = ...) -> int: ...
def default_int_handler(signalnum: int, frame: FrameType | None, /) -> None: ...
def alarm(seconds: int, /) -> int: ...
