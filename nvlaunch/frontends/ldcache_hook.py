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
writer (ldcache_update.write_in_root).

The spec gives this hook an explicit environment (hook_invocation below): a createContainer
hook without `env` would inherit the container's (CVE-2025-23266, LD_PRELOAD from the
image), and `python -m` would put the hook's cwd -- the container rootfs -- first on
sys.path, so the interpreter is run with -P / PYTHONSAFEPATH=1.
"""
from __future__ import annotations

import json
import os
import sys

from nvlaunch.core.errors import ContainerPathError, UsageError

# The directories ld.so searches without being told (glibc's system dirs on x86-64 and
# the multiarch ones Debian configures); a --folder among them needs no ld.so.conf.d file.
_SYSTEM_LIBDIRS = frozenset({"/lib", "/usr/lib", "/lib64", "/usr/lib64",
                             "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"})
LD_SO_CONF_D = "/etc/ld.so.conf.d"
CONF_NAME = "00-nvlaunch.conf"

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


def rootfs_from_state(state_text: str) -> str:
    """The rootfs path (as seen by the hook) from the OCI state JSON."""
    try:
        state = json.loads(state_text)
    except ValueError as err:
        raise UsageError(f"ldcache: OCI state on stdin is not JSON: {err}") from None
    if not isinstance(state, dict):
        raise UsageError("ldcache: OCI state on stdin is not a JSON object")
    root = state.get("root")            # crun's extension: the rootfs itself
    if isinstance(root, str) and root.startswith("/"):
        return root
    bundle = state.get("bundle") or state.get("bundlePath")
    if not isinstance(bundle, str) or not bundle.startswith("/"):
        raise UsageError("ldcache: OCI state has no absolute bundle path")
    config = os.path.join(bundle, "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            spec = json.load(f)
        path = spec["root"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"ldcache: cannot read root.path from {config}: {err}") from None
    if not isinstance(path, str) or not path:
        raise UsageError(f"ldcache: {config}: root.path is empty")
    return os.path.normpath(os.path.join(bundle, path))


def apply(rootfs: str, links, libs, folders=(), kernel=None) -> None:
    """Make `links` ((target, link) pairs), the ld.so.conf.d entry for `folders` and the
    ld cache entries `libs` ((soname, path, is32) triples) inside `rootfs`."""
    if kernel is None:
        from nvlaunch.kernel.real import REAL as kernel
    from nvlaunch.exec.ldcache_writer import write_in_root
    from nvlaunch.exec.inroot import make_in_root, mkdirs_in_root
    if os.path.realpath(rootfs) == "/":
        # NVIDIA's update-ldcache refuses "/" too: that would be the host's cache
        raise ContainerPathError("ldcache: the container rootfs resolves to /; refusing to touch the host")
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for target, link in links:
            make_in_root(kernel, rootfd, link, "link", target=target)
        extra = [d for d in dict.fromkeys(folders) if d not in _SYSTEM_LIBDIRS]
        if extra:
            # So that an ldconfig run later inside the container keeps the libraries.
            dfd = mkdirs_in_root(kernel, rootfd, LD_SO_CONF_D)
            try:
                tmp = f".{CONF_NAME}.{os.getpid()}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=dfd)
                with os.fdopen(fd, "w") as f:
                    f.write("# made by nvlaunch (CDI hook): the NVIDIA driver libraries\n")
                    f.write("".join(d + "\n" for d in extra))
                os.rename(tmp, CONF_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        if libs:
            write_in_root(kernel, rootfd, list(libs))
    finally:
        os.close(rootfd)


def cmd_ldcache(gopts: dict, args: list) -> int:
    from nvlaunch.cli.main import parse_command
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
    rootfs = opts.get("rootfs") or rootfs_from_state(sys.stdin.read())
    apply(rootfs, links, libs, folders)
    return 0


# ------------------------------------------------------------------ how to call nvlaunch

ENV_HOOK_PATH = "NVLAUNCH_HOOK_PATH"     # as runtime_shim.hook_path() honours it
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hook_invocation(hook_path: str | None = None) -> tuple[str, list, list]:
    """(path, argv prefix, env list) that runs this nvlaunch from a hook.

    With `hook_path` or $NVLAUNCH_HOOK_PATH (an `nvlaunch` executable): that program.
    Running as the installed console script: that script, as runtime_shim.hook_command
    runs it (its Python with -S where it is nvlaunch's own script).  Else (`python -m
    nvlaunch` from a source tree): this interpreter with -S, -P (no cwd on sys.path;
    Python >= 3.11) and PYTHONPATH naming the directory that holds this package.  The env
    is complete: nothing is inherited.
    """
    env = [f"PATH={SAFE_PATH}", "PYTHONSAFEPATH=1", "PYTHONDONTWRITEBYTECODE=1", "LANG=C.UTF-8"]
    hook_path = hook_path or os.environ.get(ENV_HOOK_PATH)
    if hook_path:
        if not hook_path.startswith("/"):
            raise UsageError(f"hook path {hook_path}: need an absolute path")
        return hook_path, [os.path.basename(hook_path)], env
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) == "nvlaunch" and os.access(script, os.X_OK) \
            and os.path.isfile(script):
        from nvlaunch.frontends.runtime_shim import hook_command
        path, argv = hook_command(script)
        return path, argv, env
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    exe = sys.executable or "/usr/bin/python3"
    # -S: no site module.  The hook needs nothing from site-packages, and an image's .pth
    # files can cost more than the hook itself (55 ms of a 67 ms start on the GPU host).
    if sys.version_info >= (3, 11):
        return exe, [os.path.basename(exe), "-S", "-P", "-m", "nvlaunch"], \
            env + [f"PYTHONPATH={pkg_parent}"]
    # Python 3.10 has no -P: isolated mode (no cwd, no PYTHON* variables) and the
    # package directory put on sys.path by the command itself.
    code = f"import sys; sys.path.insert(0, {pkg_parent!r}); from nvlaunch.cli.main import main; sys.exit(main())"
    return exe, [os.path.basename(exe), "-I", "-S", "-c", code], env
