"""The kernel, as one injectable object: the only module that imports the syscall core.

RealKernel is the whole surface the executors (exec/) use: the namespace, mount and
bpf calls of nvlaunch._ns, and the plain file operations, taken from `os` with the same
signatures (dir_fd= included), so that a recording fake (tests/fakes.py) sees every
change an executor makes to the system and can fail any of them.  Executors never call
`os` for something that changes the system; they read through host/ (stat, readlink).
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvlaunch.kernel.protocol import Kernel

try:
    from nvlaunch import _ns
except ImportError as _err:
    from nvlaunch.core.errors import NvlaunchError
    raise NvlaunchError(
        f"the syscall core nvlaunch._ns is not built in {os.path.dirname(os.path.dirname(__file__))} "
        f"({_err}); build it: `make test`, or `python3 setup.py build_ext --inplace`") from None


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a short write continues)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class RealKernel:
    # namespaces, mounts, processes (nvlaunch._ns)
    clone = staticmethod(_ns.clone)
    setns = staticmethod(_ns.setns)
    mount = staticmethod(_ns.mount)
    bind_mount = staticmethod(_ns.bind_mount)
    remount_bind = staticmethod(_ns.remount_bind)
    mount_setattr = staticmethod(_ns.mount_setattr)
    umount2 = staticmethod(_ns.umount2)
    pivot_root = staticmethod(_ns.pivot_root)
    prctl = staticmethod(_ns.prctl)
    sethostname = staticmethod(_ns.sethostname)
    openat2 = staticmethod(_ns.openat2)
    write_file = staticmethod(_ns.write_file)
    # device cgroup programs
    bpf_prog_load = staticmethod(_ns.bpf_prog_load)
    bpf_prog_attach = staticmethod(_ns.bpf_prog_attach)
    bpf_prog_query = staticmethod(_ns.bpf_prog_query)
    bpf_prog_get_fd_by_id = staticmethod(_ns.bpf_prog_get_fd_by_id)
    bpf_prog_xlated_insns = staticmethod(_ns.bpf_prog_xlated_insns)
    # files (os, same signatures)
    open = staticmethod(os.open)
    close = staticmethod(os.close)
    dup = staticmethod(os.dup)
    write_all = staticmethod(_write_all)
    mkdir = staticmethod(os.mkdir)
    rmdir = staticmethod(os.rmdir)
    symlink = staticmethod(os.symlink)
    unlink = staticmethod(os.unlink)
    rename = staticmethod(os.rename)
    chmod = staticmethod(os.chmod)
    chown = staticmethod(os.chown)
    chdir = staticmethod(os.chdir)
    chroot = staticmethod(os.chroot)
    # credentials (a root container's --uid/--gid)
    setgroups = staticmethod(os.setgroups)
    setgid = staticmethod(os.setgid)
    setuid = staticmethod(os.setuid)


REAL: Kernel = RealKernel()     # (mypy checks here that RealKernel is a Kernel)
