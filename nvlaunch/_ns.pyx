# cython: language_level=3, boundscheck=False, wraparound=False
"""The syscall core: one thin wrapper per kernel operation, and nothing else.

Each function takes its arguments in kernel order, releases the GIL around each call it
makes, retries a call for as long as it fails with EINTR, and raises
OSError(errno, strerror, path[, None, path2]) on failure (for mount: filename=target,
filename2=source).  Between tries, Python signal handlers run, as in the os module
(PEP 475): a handler that raises ends the wrapper with its exception.  The exception is
clone: it keeps the GIL (fork semantics, PyOS_BeforeFork/AfterFork) and is not retried,
because the kernel itself restarts a fork that a signal interrupts (ERESTARTNOINTR) and
fails it with EINTR only for a fatal signal, which ends the caller anyway.
No defaults that hold policy, no path joins, no logging: the Python layers above decide
what to call and how to report it.
"""
from cpython.exc cimport PyErr_CheckSignals
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport uint64_t
from nvlaunch._ns cimport *

# Mount flags (sys/mount.h MS_*) and what statvfs reports of them (ST_*: the same values
# for RDONLY/NOSUID/NODEV/NOEXEC/NOATIME/NODIRATIME/RELATIME; NOSYMFOLLOW differs).
cdef unsigned long _MS_BIND = 4096, _MS_REC = 16384, _MS_REMOUNT = 32
cdef unsigned long _MS_STRICTATIME = 1 << 24, _MS_NOSYMFOLLOW = 256
cdef unsigned long _ST_NOATIME = 0x400, _ST_RELATIME = 0x1000, _ST_NOSYMFOLLOW = 0x2000
# What a bind remount may add: RDONLY NOSUID NODEV NOEXEC.  MOUNT_ATTR_* of mount_setattr(2)
# has the same four values.
cdef unsigned long _ADDABLE = 0x1 | 0x2 | 0x4 | 0x8
# The per-mount flags statvfs reports as they are in MS_* form: RDONLY NOSUID NODEV NOEXEC
# NOATIME NODIRATIME RELATIME.  The kernel locks all of these on the mounts a user namespace
# inherits (fs/namespace.c: MNT_LOCK_READONLY/NOSUID/NODEV/NOEXEC/ATIME), and a remount
# restates the whole set, so one left out is one cleared: EPERM where it is locked.
cdef unsigned long _CARRIED = _ADDABLE | 0x400 | 0x800 | 0x1000
# 0 once mount_setattr(2) gave ENOSYS (before Linux 5.12): remount_bind then goes straight
# to its statvfs remount.
cdef bint _have_setattr = 1


cdef inline bytes _b(object s):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return (<str>s).encode()


cdef object _err(int e, object path=None, object path2=None):
    msg = strerror(e).decode()
    if path2 is not None:
        return OSError(e, msg, path, None, path2)
    if path is not None:
        return OSError(e, msg, path)
    return OSError(e, msg)


cdef inline int _again(int e) except -1:
    """After a call failed with errno `e`: 1 to try it again (EINTR), 0 to raise `e`.
    Before a retry the pending Python signal handlers run (PEP 475); one that raises
    propagates its exception from here, and the wrapper ends with it.

    The wrappers all follow one pattern, errno read before the GIL comes back:
        while True:
            with nogil:
                r = call(...)
                e = errno
            if r >= 0:            # or == 0: the call's success test
                break / return
            if not _again(e):
                raise _err(e, ...)
    """
    if e != EINTR:
        return 0
    PyErr_CheckSignals()
    return 1


cdef extern from "Python.h":
    void PyOS_BeforeFork()
    void PyOS_AfterFork_Parent()
    void PyOS_AfterFork_Child()


def clone(unsigned long flags):
    """clone(2) with fork semantics (no new stack, SIGCHLD on exit) plus namespace flags:
    the child starts as PID 1 of a new pid namespace with CLONE_NEWPID.  Returns 0 in the
    child, the child's pid in the parent.  The caller must be single-threaded.
    Not retried on EINTR (see the module docstring), and the GIL is kept."""
    cdef long r
    PyOS_BeforeFork()
    r = syscall(SYS_clone, flags | 17, NULL, NULL, NULL, NULL)   # 17 = SIGCHLD
    if r == 0:
        PyOS_AfterFork_Child()
        return 0
    e = errno
    PyOS_AfterFork_Parent()
    if r < 0:
        raise _err(e)
    return r


def unshare(int flags):
    cdef int r, e
    while True:
        with nogil:
            r = c_unshare(flags)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e)


def setns(int fd, int nstype, path=None):
    """setns(2); `path` only names the namespace file in the error."""
    cdef int r, e
    while True:
        with nogil:
            r = c_setns(fd, nstype)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, path)


def mount(source, target, fstype, unsigned long flags, data):
    cdef bytes bs = _b(source), bt = _b(target), bf = _b(fstype), bd = _b(data)
    cdef const char *cs = <const char *>bs if bs is not None else NULL
    cdef const char *ct = <const char *>bt
    cdef const char *cf = <const char *>bf if bf is not None else NULL
    cdef const void *cd = <const void *><const char *>bd if bd is not None else NULL
    cdef int r, e
    while True:
        with nogil:
            r = c_mount(cs, ct, cf, flags, cd)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, target, source)


def bind_mount(source, target, unsigned long flags):
    """Bind `source` on `target` (MS_REC in flags makes it recursive), then, if flags ask for
    any of RDONLY/NOSUID/NODEV/NOEXEC, add them to the new mount with remount_bind(), which
    keeps every other flag the mount carries (a user namespace may clear none of the locked
    ones: nosuid,nodev of a squashfs driver tree, the atime mode of a strictatime mount).
    Only the top mount of a recursive bind gets them (no AT_RECURSIVE), as before.
    """
    cdef bytes bs = _b(source), bt = _b(target)
    cdef const char *cs = bs
    cdef const char *ct = bt
    cdef unsigned long want = flags & _ADDABLE
    cdef unsigned long bind = _MS_BIND | (flags & _MS_REC)
    cdef int r, e
    while True:
        with nogil:
            r = c_mount(cs, ct, NULL, bind, NULL)
            e = errno
        if r == 0:
            break
        if not _again(e):
            raise _err(e, target, source)
    if want:
        remount_bind(target, want)


def remount_bind(target, unsigned long flags):
    """Add RDONLY/NOSUID/NODEV/NOEXEC from `flags` to the mount at `target`, changing nothing
    else about it: mount_setattr(2) with only those attributes set (Linux 5.12+).  Where that
    gives ENOSYS, a bind remount (MS_BIND|MS_REMOUNT) that restates what the mount carries,
    read with statvfs: its ro/nosuid/nodev/noexec, nodiratime, its atime mode (noatime or
    relatime as reported; MS_STRICTATIME where neither is, since a remount that names an
    atime flag such as nodiratime but neither noatime nor strictatime means relatime), and
    nosymfollow (ST_NOSYMFOLLOW, 0x2000, is MS_NOSYMFOLLOW, 256).  So no locked flag is
    ever cleared (the kernel's EPERM in a user namespace) and no other flag is lost.
    `target` must name the mount itself: after binding onto /proc/self/fd/N, that link
    still leads to the inode *under* the new mount, so the caller reopens the path first."""
    global _have_setattr
    cdef bytes bt = _b(target)
    cdef const char *ct = bt
    cdef unsigned long want = flags & _ADDABLE
    cdef unsigned long carried
    cdef mount_attr attr
    cdef statvfs sv
    cdef long r
    cdef int e
    memset(&attr, 0, sizeof(attr))
    attr.attr_set = want
    while _have_setattr:
        with nogil:
            r = syscall(SYS_mount_setattr, AT_FDCWD, ct, 0, &attr, sizeof(attr))
            e = errno
        if r == 0:
            return
        if e == ENOSYS:
            _have_setattr = 0
        elif not _again(e):
            raise _err(e, target)
    while True:
        with nogil:
            r = c_statvfs(ct, &sv)
            e = errno
        if r == 0:
            break
        if not _again(e):
            raise _err(e, target)
    carried = sv.f_flag & _CARRIED
    if not sv.f_flag & (_ST_NOATIME | _ST_RELATIME):
        carried |= _MS_STRICTATIME
    if sv.f_flag & _ST_NOSYMFOLLOW:
        carried |= _MS_NOSYMFOLLOW
    while True:
        with nogil:
            r = c_mount(NULL, ct, NULL, _MS_BIND | _MS_REMOUNT | carried | want, NULL)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, target)


def sethostname(name):
    cdef bytes bn = _b(name)
    cdef const char *cn = bn
    cdef size_t n = len(bn)
    cdef int r, e
    while True:
        with nogil:
            r = c_sethostname(cn, n)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e)


def mount_setattr(int dirfd, path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr):
    """mount_setattr(2) (Linux 5.12+) with propagation and userns left alone; with
    AT_RECURSIVE in flags it changes a whole mount tree at once."""
    cdef bytes bp = _b(path)
    cdef const char *cp = bp
    cdef mount_attr attr
    cdef long r
    cdef int e
    memset(&attr, 0, sizeof(attr))
    attr.attr_set = attr_set
    attr.attr_clr = attr_clr
    while True:
        with nogil:
            r = syscall(SYS_mount_setattr, dirfd, cp, flags, &attr, sizeof(attr))
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, path)


def prctl(int option, unsigned long arg2):
    """prctl(2) for the options that take one argument (PR_SET_PDEATHSIG,
    PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, ...); returns the call's result."""
    cdef int r, e
    while True:
        with nogil:
            r = c_prctl(option, arg2, 0, 0, 0)
            e = errno
        if r >= 0:
            return r
        if not _again(e):
            raise _err(e)


def umount2(target, int flags):
    cdef bytes bt = _b(target)
    cdef const char *ct = bt
    cdef int r, e
    while True:
        with nogil:
            r = c_umount2(ct, flags)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, target)


def pivot_root(new_root, put_old):
    cdef bytes bn = _b(new_root), bo = _b(put_old)
    cdef const char *cn = bn
    cdef const char *co = bo
    cdef long r
    cdef int e
    while True:
        with nogil:
            r = syscall(SYS_pivot_root, cn, co)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, new_root, put_old)


def mknod(path, unsigned int mode, unsigned long dev):
    cdef bytes bp = _b(path)
    cdef const char *cp = bp
    cdef int r, e
    while True:
        with nogil:
            r = c_mknod(cp, mode, dev)
            e = errno
        if r == 0:
            return
        if not _again(e):
            raise _err(e, path)


def openat2(int dirfd, path, uint64_t flags, uint64_t mode, uint64_t resolve):
    """openat2(2); returns the new fd.  ENOSYS on kernels before 5.6."""
    cdef bytes bp = _b(path)
    cdef const char *cp = bp
    cdef open_how how
    cdef long r
    cdef int e
    memset(&how, 0, sizeof(how))
    how.flags = flags
    how.mode = mode
    how.resolve = resolve
    while True:
        with nogil:
            r = syscall(SYS_openat2, dirfd, cp, &how, sizeof(how))
            e = errno
        if r >= 0:
            return r
        if not _again(e):
            raise _err(e, path)


def write_file(path, data):
    """open(O_WRONLY) + write(2) until all of `data` is written + close.  uid_map, gid_map,
    setgroups and cgroup files take their whole content in the first write; a short write
    (a pipe or FIFO interrupted by a signal) goes on with the rest, and a write that
    makes no progress raises OSError(EIO, "short write").  Empty data is one write of
    0 bytes.  close is not retried: Linux frees the fd even when close fails."""
    cdef bytes bp = _b(path), bd = _b(data)
    cdef const char *cp = bp
    cdef const char *cd = bd
    cdef size_t n = len(bd), off = 0
    cdef int fd, e
    cdef ssize_t w
    while True:
        with nogil:
            fd = c_open(cp, O_WRONLY | O_CLOEXEC)
            e = errno
        if fd >= 0:
            break
        if not _again(e):
            raise _err(e, path)
    try:
        while True:
            with nogil:
                w = c_write(fd, cd + off, n - off)
                e = errno
            if w >= 0:
                off += <size_t>w
                if off >= n:
                    return
                if w == 0:
                    raise OSError(5, "short write", path)
            elif not _again(e):
                raise _err(e, path)
    finally:
        c_close(fd)


def bpf_prog_load(unsigned int prog_type, bytes insns, license, unsigned int log_size):
    """BPF_PROG_LOAD; returns the program fd.  With log_size, a verifier failure's log is
    appended to the OSError message."""
    cdef bytes bl = _b(license)
    cdef const char *cl = bl
    cdef const char *ci = insns
    cdef unsigned n = len(insns) // 8
    cdef char *log = NULL
    cdef long r
    cdef int e
    if log_size:
        log = <char *>malloc(log_size)
    try:
        while True:
            if log != NULL:
                log[0] = 0
            with nogil:
                r = nvl_bpf_prog_load(prog_type, ci, n, cl, log, log_size)
                e = errno
            if r >= 0:
                return r
            if not _again(e):
                msg = strerror(e).decode()
                if log != NULL and log[0]:
                    msg += ": " + log[:log_size].decode(errors="replace").strip()
                raise OSError(e, msg)
    finally:
        free(log)


def bpf_prog_attach(int prog_fd, int target_fd, unsigned int attach_type, unsigned int flags,
                    int replace_fd):
    cdef long r
    cdef int e
    while True:
        with nogil:
            r = nvl_bpf_prog_attach(prog_fd, target_fd, attach_type, flags, replace_fd)
            e = errno
        if r >= 0:
            return
        if not _again(e):
            raise _err(e)


def bpf_prog_detach(int prog_fd, int target_fd, unsigned int attach_type):
    cdef long r
    cdef int e
    while True:
        with nogil:
            r = nvl_bpf_prog_detach(prog_fd, target_fd, attach_type)
            e = errno
        if r >= 0:
            return
        if not _again(e):
            raise _err(e)


def bpf_prog_query(int target_fd, unsigned int attach_type, unsigned int max_ids):
    """BPF_PROG_QUERY; returns (attach_flags, [program ids])."""
    cdef unsigned *ids = <unsigned *>malloc(sizeof(unsigned) * (max_ids or 1))
    cdef unsigned cnt, fl
    cdef long r
    cdef int e
    try:
        while True:
            cnt = max_ids     # the helper writes the kernel's count back, also on failure
            fl = 0
            with nogil:
                r = nvl_bpf_prog_query(target_fd, attach_type, ids, &cnt, &fl)
                e = errno
            if r >= 0:
                return fl, [ids[i] for i in range(min(cnt, max_ids))]
            if not _again(e):
                raise _err(e)
    finally:
        free(ids)


def bpf_prog_get_fd_by_id(unsigned int prog_id):
    cdef long r
    cdef int e
    while True:
        with nogil:
            r = nvl_bpf_prog_get_fd_by_id(prog_id)
            e = errno
        if r >= 0:
            return r
        if not _again(e):
            raise _err(e)


def bpf_prog_xlated_insns(int prog_fd):
    """BPF_OBJ_GET_INFO_BY_FD: the program's (translated) instructions as bytes."""
    cdef unsigned n, cap
    cdef long r
    cdef int e
    while True:
        n = 0             # the helper writes the kernel's length back
        with nogil:
            r = nvl_bpf_prog_xlated(prog_fd, NULL, &n)
            e = errno
        if r >= 0:
            break
        if not _again(e):
            raise _err(e)
    cap = n
    buf = bytearray(cap)
    cdef char *cb = buf
    while True:
        n = cap
        with nogil:
            r = nvl_bpf_prog_xlated(prog_fd, cb, &n)
            e = errno
        if r >= 0:
            break
        if not _again(e):
            raise _err(e)
    return bytes(buf[:n])
