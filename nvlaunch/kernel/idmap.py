"""User namespace id maps for a rootless container.

The caller's uid/gid appear as --uid/--gid inside.  Where newuidmap/newgidmap exist and
/etc/subuid, /etc/subgid give the caller a subordinate range, the rest of the ids inside
map onto that range (as podman does), through those setuid helpers; otherwise the single
id is written straight to /proc/PID/{setgroups,uid_map,gid_map}, which an unprivileged
process may do for its own ids (user_namespaces(7)).  Setgroups stays "allow" with the
helpers and is "deny" without them; either way the caller's supplementary groups are
kept (never dropped), so a GPU node that is only reachable through group "video" stays
reachable inside.
"""
from __future__ import annotations

import os
import pwd

from nvlaunch.core.errors import NamespaceError


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nvlaunch.kernel.protocol import Kernel

NEWUIDMAP = "/usr/bin/newuidmap"
NEWGIDMAP = "/usr/bin/newgidmap"
MAX_ID = 4294967295


def _number(text: str) -> int | None:
    """A decimal id or count; None for anything else (int() refuses 4300+ digits)."""
    return int(text) if len(text) <= 20 and text.isascii() and text.isdigit() else None


def parse_subids(lines: Iterable[str], owners: tuple[str, ...]) -> tuple[int, int] | None:
    """(start, count) of the first valid "owner:start:count" line of /etc/subuid or
    /etc/subgid (`lines`: a str's split("\\n") or the open file) whose owner is one of
    `owners` (the user's name, its uid).

    A malformed line (not three fields, not decimal numbers, an empty range or one
    past the last id) is skipped, as shadow's parser skips it: one bad line of some
    other user must not cost this one its range."""
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in owners:
            continue
        start, count = _number(fields[1]), _number(fields[2])
        if start is not None and count and start + count <= MAX_ID:
            return start, count
    return None


def subordinate_range(path: str, uid: int) -> tuple[int, int] | None:
    """(start, count) of the first range for this user in /etc/subuid or /etc/subgid."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    owners = (str(uid),) if name is None else (name, str(uid))
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_subids(f, owners)
    except OSError:
        return None


def id_map(inside: int, outside: int, sub: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """Lines (inside, outside, count): our id at `inside`, the subordinate range filling the
    ids below and above it."""
    if inside < 0 or inside >= MAX_ID:
        raise NamespaceError(f"--uid/--gid {inside}: not a valid id")
    lines = [(inside, outside, 1)]
    if sub:
        start, count = sub
        below = min(inside, count)
        if below:
            lines.append((0, start, below))
        if count > below:
            lines.append((inside + 1, start + below, count - below))
    return lines


def _fmt(lines: list[tuple[int, int, int]]) -> str:
    return "".join(f"{a} {b} {c}\n" for a, b, c in lines)


def write_maps(kernel: Kernel, pid: int, uid: int, gid: int) -> None:
    """Map the calling user into the user namespace of `pid`."""
    euid, egid = os.geteuid(), os.getegid()
    subu = subordinate_range("/etc/subuid", euid) if os.path.exists(NEWUIDMAP) else None
    subg = subordinate_range("/etc/subgid", euid) if os.path.exists(NEWGIDMAP) else None
    uids, gids = id_map(uid, euid, subu), id_map(gid, egid, subg)
    if subu and subg:
        # The two setuid helpers run side by side (posix_spawn: importing subprocess
        # would cost more than both helpers together).
        running = []
        for helper, lines in ((NEWUIDMAP, uids), (NEWGIDMAP, gids)):
            r, w = os.pipe2(os.O_CLOEXEC)
            argv = [helper, str(pid)] + [str(x) for line in lines for x in line]
            child = os.posix_spawn(helper, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                   file_actions=[(os.POSIX_SPAWN_DUP2, w, 1),
                                                 (os.POSIX_SPAWN_DUP2, w, 2)],
                                   setsigmask=())   # P has signals blocked meanwhile
            os.close(w)
            running.append((helper, child, r))
        failures = []
        for helper, child, r in running:
            with os.fdopen(r, "rb") as f:
                out = f.read().decode(errors="replace").strip()
            status = os.waitpid(child, 0)[1]
            if status != 0:
                failures.append(f"{helper} failed: {out or os.waitstatus_to_exitcode(status)}")
        if failures:
            raise NamespaceError("; ".join(failures), "check /etc/subuid and /etc/subgid for this user")
        return
    try:
        kernel.write_file(f"/proc/{pid}/uid_map", _fmt(id_map(uid, euid, None)))
        kernel.write_file(f"/proc/{pid}/setgroups", "deny")
        kernel.write_file(f"/proc/{pid}/gid_map", _fmt(id_map(gid, egid, None)))
    except OSError as err:
        raise NamespaceError(f"cannot map uid {euid} to {uid} in the user namespace: {err.strerror}",
                             errno=err.errno) from err
