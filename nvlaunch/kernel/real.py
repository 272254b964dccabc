"""The kernel, as one injectable object: the only module that imports the syscall core.

RealKernel delegates to nvlaunch._ns (and os for plain file work); tests of call
sequences pass a recording fake with the same method names (tests/fakes.py).
Policy modules never import this module.
"""
from __future__ import annotations

import os


try:
    from nvlaunch import _ns
except ImportError as _err:
    from nvlaunch.core.errors import NvlaunchError
    raise NvlaunchError(
        f"the syscall core nvlaunch._ns is not built in {os.path.dirname(__file__)} ({_err}); "
        "build it: `make test`, or `python3 setup.py build_ext --inplace`") from None


class RealKernel:
    clone = staticmethod(_ns.clone)
    unshare = staticmethod(_ns.unshare)
    setns = staticmethod(_ns.setns)
    mount = staticmethod(_ns.mount)
    bind_mount = staticmethod(_ns.bind_mount)
    remount_bind = staticmethod(_ns.remount_bind)
    umount2 = staticmethod(_ns.umount2)
    prctl = staticmethod(_ns.prctl)
    mount_setattr = staticmethod(_ns.mount_setattr)
    sethostname = staticmethod(_ns.sethostname)
    pivot_root = staticmethod(_ns.pivot_root)
    mknod = staticmethod(_ns.mknod)
    openat2 = staticmethod(_ns.openat2)
    write_file = staticmethod(_ns.write_file)
    bpf_prog_load = staticmethod(_ns.bpf_prog_load)
    bpf_prog_attach = staticmethod(_ns.bpf_prog_attach)
    bpf_prog_detach = staticmethod(_ns.bpf_prog_detach)
    bpf_prog_query = staticmethod(_ns.bpf_prog_query)
    bpf_prog_get_fd_by_id = staticmethod(_ns.bpf_prog_get_fd_by_id)
    bpf_prog_xlated_insns = staticmethod(_ns.bpf_prog_xlated_insns)
    # plain file work, through os so a fake can record it too
    open = staticmethod(os.open)
    close = staticmethod(os.close)
    mkdir = staticmethod(os.mkdir)
    symlink = staticmethod(os.symlink)
    chdir = staticmethod(os.chdir)
    fchdir = staticmethod(os.fchdir)
    chroot = staticmethod(os.chroot)


REAL = RealKernel()
