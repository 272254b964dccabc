"""The error tree: every failure nvlaunch reports is an NvlaunchError.

Layers below raise OSError (the syscall core) or ValueError-like parse errors; each
layer above wraps them with context (`raise XError(...) from err`).  The CLI prints
`nvlaunch: error: <str(err)>` and exits with `err.exit_code`.
"""
from __future__ import annotations

import errno as _errno

EXIT_SETUP = 125      # bad usage, bad input, setup failed
EXIT_NOEXEC = 126     # command found but not executable
EXIT_NOTFOUND = 127   # command not found


class NvlaunchError(Exception):
    """Base of every error nvlaunch reports to a user."""
    exit_code = EXIT_SETUP

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(NvlaunchError):
    """Bad command line or bad input value."""


class DiscoveryError(NvlaunchError):
    """The host's driver, ld cache or GPU information could not be read."""


class SelectionError(NvlaunchError):
    """A GPU or capability request names something that does not exist."""


class RequirementError(NvlaunchError):
    """An NVIDIA_REQUIRE_* condition is not met by this host."""


class MountError(NvlaunchError):
    """A mount failed; says which source, target and flags, like runc's mountError."""

    def __init__(self, op: str, source: str | None, target: str, flags: str, err: OSError):
        self.op, self.source, self.target, self.flags = op, source, target, flags
        self.errno = err.errno
        parts = [op]
        if source:
            parts.append(f"src={source}")
        parts.append(f"dst={target}")
        if flags:
            parts.append(f"flags={flags}")
        super().__init__(f"{' '.join(parts)}: {err.strerror or err}", hint_for(err.errno, op))


class NamespaceError(NvlaunchError):
    """Creating or joining a namespace failed."""


class CgroupError(NvlaunchError):
    """Device cgroup rules could not be read or written."""


class ContainerPathError(NvlaunchError):
    """A path inside a container rootfs is unsafe (escapes the root) or unusable."""


class ExecError(NvlaunchError):
    """The container's command could not be executed."""

    def __init__(self, command: str, err: OSError):
        self.errno = err.errno
        if err.errno == _errno.ENOENT:
            self.exit_code = EXIT_NOTFOUND
            msg = f"{command}: command not found"
        else:
            self.exit_code = EXIT_NOEXEC
            msg = f"{command}: cannot execute: {err.strerror}"
        super().__init__(msg)


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for any exception, as the CLI reports it."""
    if isinstance(exc, NvlaunchError):
        return exc.exit_code, str(exc)
    if isinstance(exc, OSError):
        return EXIT_SETUP, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return EXIT_SETUP, f"internal error: {type(exc).__name__}: {exc}"


# Error records, for a failure in a process that nvlaunch forked (a container's PID 1, a
# hook's injector) to reach the parent as one line: NUL-separated fields, so that no
# module has to be imported to write one (after pivot_root, none can be).
def pack_error(exc: BaseException, trace: bool = False) -> bytes:
    code, message = describe(exc)
    text = ""
    if trace:
        import traceback   # callers that pass trace=True import it while they still can
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "\0".join(str(f).replace("\0", " ") for f in (code, message, text)).encode(errors="replace")


def unpack_error(record: bytes) -> tuple["NvlaunchError", str]:
    """The error a record describes (with its exit code), and its traceback text."""
    fields = record.decode(errors="replace").split("\0")
    if len(fields) != 3 or not fields[0].isdigit():
        return NvlaunchError(record.decode(errors="replace").strip() or "setup failed"), ""
    code, message, trace = fields
    err = NvlaunchError(message)
    err.exit_code = int(code)
    return err, trace


# errno -> a hint a user can act on, keyed by (errno, operation) or errno alone.
_HINTS = {
    (_errno.EPERM, "unshare"): "the kernel refuses unprivileged user namespaces here; "
    "allow them with `sysctl kernel.unprivileged_userns_clone=1` (Debian), "
    "`sysctl kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 24.04) or "
    "`sysctl user.max_user_namespaces=15000`, or run as root",
    (_errno.ENOSPC, "unshare"): "user.max_user_namespaces is exhausted or 0; raise it with sysctl",
    _errno.ENOSPC: "too many mounts? see /proc/sys/fs/mount-max",
    (_errno.EINVAL, "pivot_root"): "the new root must be a mount point on a private propagation tree",
}


def hint_for(err: int | None, op: str | None = None) -> str | None:
    if err is None:
        return None
    return _HINTS.get((err, op)) or _HINTS.get(err)
