"""The kernel, as one injectable object: the only module that imports the syscall core.

RealKernel delegates to nvlaunch._ns (and os for plain file work); tests of call
sequences pass a recording fake with the same method names (tests/fakes.py).
Policy modules never import this module.
"""
from __future__ import annotations

import os


def _core_from_another_copy():
    """nvlaunch._ns taken from another copy of this package on sys.path.

    `python3 -m nvlaunch` run in a source checkout imports the checkout's package (the
    current directory comes first on sys.path) even when the extension was built only into
    an installed copy (`pip install --target DIR .` with DIR on PYTHONPATH).  That copy's
    core is used when its interface file (_ns.pyi) is the same as ours byte for byte, so
    the two cannot disagree; otherwise one clear error says how to build it."""
    import sys

    import nvlaunch
    from nvlaunch.errors import NvlaunchError
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "_ns.pyi"), "rb") as f:
            interface = f.read()
    except OSError:
        interface = None
    for entry in sys.path:
        other = os.path.join(entry or ".", "nvlaunch")
        if interface is None or os.path.realpath(other) == os.path.realpath(here):
            continue
        try:
            with open(os.path.join(other, "_ns.pyi"), "rb") as f:
                if f.read() != interface:
                    continue
            if not any(n.startswith("_ns.") and n.endswith(".so") for n in os.listdir(other)):
                continue
        except OSError:
            continue
        nvlaunch.__path__.append(other)
        try:
            from nvlaunch import _ns as core
            return core
        except ImportError:
            nvlaunch.__path__.remove(other)
    raise NvlaunchError(f"the syscall core nvlaunch._ns is not built in {here} "
                        f"(build it: `make test`, or `python3 setup.py build_ext --inplace`)")


try:
    from nvlaunch import _ns
except ImportError:
    _ns = _core_from_another_copy()


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
