# C declarations for the syscall core (nvlaunch/_ns.pyx).  Nothing here holds policy.
from libc.stdint cimport uint32_t, uint64_t, int32_t

cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR
    int ENOSYS

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)

cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)
    ssize_t c_write "write"(int fd, const void *buf, size_t count)
    int c_close "close"(int fd)
    int c_sethostname "sethostname"(const char *name, size_t len)

cdef extern from "<fcntl.h>" nogil:
    int AT_FDCWD
    int c_open "open"(const char *path, int flags, ...)
    int O_WRONLY
    int O_CLOEXEC

cdef extern from "<sys/prctl.h>" nogil:
    int c_prctl "prctl"(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
                        unsigned long arg5)

cdef extern from "<sched.h>" nogil:
    int c_unshare "unshare"(int flags)
    int c_setns "setns"(int fd, int nstype)

cdef extern from "<sys/mount.h>" nogil:
    int c_mount "mount"(const char *source, const char *target, const char *fstype,
              unsigned long flags, const void *data)
    int c_umount2 "umount2"(const char *target, int flags)

cdef extern from "<sys/stat.h>" nogil:
    ctypedef unsigned int mode_t
    ctypedef unsigned long dev_t
    int c_mknod "mknod"(const char *path, mode_t mode, dev_t dev)

cdef extern from "<sys/statvfs.h>" nogil:
    struct statvfs:
        unsigned long f_flag
    int c_statvfs "statvfs"(const char *path, statvfs *buf)

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_pivot_root
    long SYS_clone
    long SYS_mount_setattr
    long SYS_openat2
    long SYS_bpf

cdef extern from "<linux/mount.h>" nogil:
    struct mount_attr:
        uint64_t attr_set
        uint64_t attr_clr
        uint64_t propagation
        uint64_t userns_fd

cdef extern from "<linux/openat2.h>" nogil:
    struct open_how:
        uint64_t flags
        uint64_t mode
        uint64_t resolve

# bpf(2): the attribute union is filled by small C helpers (below), one per command, so
# the Cython side passes plain integers and buffers.
cdef extern from * nogil:
    """
    #include <linux/bpf.h>
    #include <string.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    static long nvl_bpf_prog_load(unsigned type, const void *insns, unsigned n,
                                  const char *license, char *log, unsigned log_size) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.prog_type = type; a.insns = (unsigned long)insns; a.insn_cnt = n;
        a.license = (unsigned long)license;
        if (log_size) { a.log_level = 1; a.log_buf = (unsigned long)log; a.log_size = log_size; }
        return syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    }
    static long nvl_bpf_prog_attach(int prog_fd, int target_fd, unsigned type, unsigned flags,
                                    int replace_fd) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.target_fd = target_fd; a.attach_bpf_fd = prog_fd; a.attach_type = type;
        a.attach_flags = flags; a.replace_bpf_fd = replace_fd;
        return syscall(SYS_bpf, BPF_PROG_ATTACH, &a, sizeof a);
    }
    static long nvl_bpf_prog_detach(int prog_fd, int target_fd, unsigned type) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.target_fd = target_fd; a.attach_bpf_fd = prog_fd; a.attach_type = type;
        return syscall(SYS_bpf, BPF_PROG_DETACH, &a, sizeof a);
    }
    static long nvl_bpf_prog_query(int target_fd, unsigned type, unsigned *ids, unsigned *cnt,
                                   unsigned *flags) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.query.target_fd = target_fd; a.query.attach_type = type;
        a.query.prog_ids = (unsigned long)ids; a.query.prog_cnt = *cnt;
        long r = syscall(SYS_bpf, BPF_PROG_QUERY, &a, sizeof a);
        *cnt = a.query.prog_cnt; *flags = a.query.attach_flags;
        return r;
    }
    static long nvl_bpf_prog_get_fd_by_id(unsigned id) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.prog_id = id;
        return syscall(SYS_bpf, BPF_PROG_GET_FD_BY_ID, &a, sizeof a);
    }
    /* Two calls: the first (buf NULL) learns the size, the second copies xlated insns. */
    static long nvl_bpf_prog_xlated(int fd, void *buf, unsigned *len) {
        struct bpf_prog_info info; memset(&info, 0, sizeof info);
        info.xlated_prog_len = *len; info.xlated_prog_insns = (unsigned long)buf;
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.info.bpf_fd = fd; a.info.info_len = sizeof info; a.info.info = (unsigned long)&info;
        long r = syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &a, sizeof a);
        *len = info.xlated_prog_len;
        return r;
    }
    """
    long nvl_bpf_prog_load(unsigned type, const void *insns, unsigned n, const char *license,
                           char *log, unsigned log_size)
    long nvl_bpf_prog_attach(int prog_fd, int target_fd, unsigned type, unsigned flags,
                             int replace_fd)
    long nvl_bpf_prog_detach(int prog_fd, int target_fd, unsigned type)
    long nvl_bpf_prog_query(int target_fd, unsigned type, unsigned *ids, unsigned *cnt,
                            unsigned *flags)
    long nvl_bpf_prog_get_fd_by_id(unsigned id)
    long nvl_bpf_prog_xlated(int fd, void *buf, unsigned *length)
