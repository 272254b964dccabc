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
    errno: int | None = None     # the OSError's errno this error came from, kept end to end

    def __init__(self, message: str, hint: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.hint = hint
        if errno is not None:
            self.errno = errno

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


def os_message(err: OSError) -> str:
    """An OSError as `FILE: strerror` (`FILE -> FILE2: ...` for a two-path error)."""
    where = ""
    if err.filename is not None:
        where = os_path(err.filename)
        if err.filename2 is not None:
            where += " -> " + os_path(err.filename2)
        where += ": "
    return where + (err.strerror or str(err))


def os_path(path: object) -> str:
    """A path for a message: bytes decoded with replacement, never a repr."""
    if isinstance(path, bytes):
        return path.decode("utf-8", "replace")
    return str(path)


def wrap(err: OSError, cls: type[NvlaunchError] | None = None, context: str | None = None,
         op: str | None = None) -> NvlaunchError:
    """The domain error for an OSError: `cls` (NvlaunchError by default) with the
    message `CONTEXT: FILE: strerror`, the errno kept, and the hint of (errno, op)."""
    msg = os_message(err)
    return (cls or NvlaunchError)(f"{context}: {msg}" if context else msg,
                                  hint_for(err.errno, op), errno=err.errno)


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for any exception: the one place an exception
    becomes the text of the `nvlaunch: error:` line (the CLI, PID 1, the injector)."""
    if isinstance(exc, NvlaunchError):
        return exc.exit_code, one_line(str(exc))
    if isinstance(exc, OSError):
        return EXIT_SETUP, one_line(os_message(exc))
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_SETUP, one_line(f"bad input: not valid UTF-8 ({exc.reason} at byte {exc.start})")
    return EXIT_SETUP, one_line(f"internal error: {type(exc).__name__}: {exc}")


def one_line(text: str) -> str:
    """Line breaks folded, so that every failure stays one line; whatever else a terminal
    would not show as itself (control characters, escape sequences, the surrogates a
    command line's undecodable bytes become) written as an escape (printable())."""
    return printable(" ".join(text.split("\n")).replace("\r", " "))


def printable(text: str) -> str:
    """`text` with every character a terminal would not print as itself escaped: an
    undecodable byte of argv or the environment (surrogateescape's U+DC80..U+DCFF) as
    \\xNN, other control, format, separator and surrogate characters as \\xNN / \\uNNNN;
    the plain space is kept.  Never fails, whatever the text holds."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def quote(value: object, limit: int = 200) -> str:
    """A user's input for an error message: a string in quotes as repr() writes it (so
    blanks and empty values show), cut to `limit` characters; anything else by its
    type name, never an object's repr."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    out = ["'"]
    for ch in value[:limit]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:        # an undecodable byte, as printable() writes it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "'\\":
            out.append("\\" + ch)
        else:
            out.append(repr(ch)[1:-1])
    out.append("'")
    text = "".join(out)
    return text if len(value) <= limit else f"{text}... ({len(value)} characters)"


def errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, NvlaunchError):
        return exc.errno
    if isinstance(exc, OSError):
        return exc.errno
    return None


# Error records, for a failure in a process that nvlaunch forked (a container's PID 1, a
# hook's injector) to reach the parent as one line: NUL-separated fields, so that no
# module has to be imported to write one (after pivot_root, none can be).
# Fields: exit code, errno (empty for none), message, traceback text.
def pack_error(exc: BaseException, trace: bool = False) -> bytes:
    code, message = describe(exc)
    num = errno_of(exc)
    text = ""
    if trace:
        import traceback   # callers that pass trace=True import it while they still can
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    fields = (code, "" if num is None else num, message, text)
    return "\0".join(str(f).replace("\0", " ") for f in fields).encode(errors="replace")


def unpack_error(record: bytes) -> tuple[NvlaunchError, str]:
    """The error a record describes (exit code and errno kept), and its traceback text."""
    fields = record.decode(errors="replace").split("\0")
    if len(fields) != 4 or not (fields[0].isascii() and fields[0].isdigit()) \
            or not (fields[1] == "" or (fields[1].isascii() and fields[1].isdigit())):
        return NvlaunchError(one_line(record.decode(errors="replace").strip()) or "setup failed"), ""
    code, num, message, trace = fields
    err = NvlaunchError(message, errno=int(num) if num else None)
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
    (_errno.EPERM, "bpf"): "loading or attaching cgroup device programs needs CAP_SYS_ADMIN "
    "(and CAP_BPF) in the initial user namespace; an LSM may also refuse it",
    (_errno.EACCES, "bpf"): "an LSM (SELinux, AppArmor) or a locked-down kernel refused access",
    (_errno.ENOENT, "bpf"): "the cgroup or one of its device programs went away meanwhile "
    "(did the container exit, or its runtime update the rules?)",
}


def hint_for(err: int | None, op: str | None = None) -> str | None:
    if err is None:
        return None
    return _HINTS.get((err, op)) or _HINTS.get(err)
