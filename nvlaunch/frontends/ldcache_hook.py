"""`nvlaunch ldcache`: the createContainer hook of nvlaunch's CDI spec.

A CDI spec can bind files and device nodes, but not make the container's `.so` links or
update its ld.so.cache; NVIDIA's spec leaves that to `nvidia-cdi-hook create-symlinks`
and `update-ldcache`.  This is nvlaunch's one hook for both:

    nvlaunch ldcache [--link TARGET::LINK]... [--lib SONAME::PATH]... [--lib32 SONAME::PATH]...
                     [--folder DIR]...

It runs as an OCI createContainer hook: inside the container's mount namespace (and user
namespace, for rootless podman), after the runtime made its mounts and before pivot_root,
with the OCI state JSON on stdin.  The rootfs is the crun `root` extension of the state
if present, else `root.path` of `<bundle>/config.json` (relative to the bundle).

Everything it is to do is in its arguments (the spec carries them); it reads nothing of
the host's driver.  Every path in the rootfs is resolved inside it (rootfs.make_in_root,
openat2 RESOLVE_IN_ROOT), so a symlink in the image cannot send a link or the cache onto
the host (NVIDIA's CVE-2024-0134 / CVE-2025-23267); no ldconfig, neither the host's nor
the image's, ever runs (CVE-2024-0135/-0136): the cache is written by nvlaunch's own
writer (exec.ldcache_writer).

The spec gives this hook an explicit environment (oci.hooks.invocation): a createContainer
hook without `env` would inherit the container's (CVE-2025-23266, LD_PRELOAD from the
image), and `python -m` would put the hook's cwd -- the container rootfs -- first on
sys.path, so the interpreter runs isolated (-I).
"""
from __future__ import annotations

import os
import sys

from nvlaunch.core.argv import parse_command
from nvlaunch.core.errors import UsageError
from nvlaunch.exec.ldcache_writer import update_rootfs
from nvlaunch.oci.hooks import guard_hook
from nvlaunch.oci.state import MAX_STATE, rootfs_of_state

OPTS = {"--link": ("link", True, True), "--lib": ("lib", True, True),
        "--lib32": ("lib32", True, True), "--folder": ("folder", True, True),
        "--rootfs": ("rootfs", True, False),
        "--help": ("help", False, False), "-h": ("help", False, False)}

USAGE = """usage: nvlaunch ldcache [--link TARGET::LINK]... [--lib SONAME::PATH]...
                        [--lib32 SONAME::PATH]... [--folder DIR]... [--rootfs DIR]
OCI createContainer hook (state JSON on stdin): make LINKs inside the container rootfs and
put the SONAME -> PATH entries first in its /etc/ld.so.cache.  --rootfs skips stdin.
"""


def _pair(item: str, flag: str) -> tuple[str, str]:
    left, sep, right = item.partition("::")
    if not sep or not left or not right:
        raise UsageError(f"ldcache: {flag} {item!r}: expected A::B")
    return left, right


def _abs(path: str, flag: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise UsageError(f"ldcache: {flag} {path!r}: need an absolute container path")
    return os.path.normpath(path)


def cmd_ldcache(gopts: dict, args: list) -> int:
    parsed = parse_command(args, OPTS, "ldcache", USAGE)
    if parsed is None:
        return 0
    opts = parsed[0]
    links = []
    for item in opts.get("link", []):
        target, link = _pair(item, "--link")
        links.append((target, _abs(link, "--link")))
    libs = []
    for flag, is32 in (("lib", False), ("lib32", True)):
        for item in opts.get(flag, []):
            soname, path = _pair(item, "--" + flag)
            if "/" in soname:
                raise UsageError(f"ldcache: --{flag} {item!r}: SONAME may not contain '/'")
            libs.append((soname, _abs(path, "--" + flag), is32))
    folders = [_abs(d, "--folder") for d in opts.get("folder", [])]
    if not opts.get("rootfs"):
        guard_hook(os.environ)          # as a hook: bounded, and never in the container's env
    rootfs = opts.get("rootfs") or rootfs_of_state(sys.stdin.buffer.read(MAX_STATE + 1))
    update_rootfs(rootfs, links, libs, folders)
    return 0
