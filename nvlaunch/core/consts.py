"""Kernel vocabularies as tables: namespace flags, mount flags, openat2 and bpf constants.

Values are the Linux UAPI ones (x86-64 and aarch64 agree on all of them).
`flags_str(MS_BIND | MS_REC)` -> "MS_BIND|MS_REC" is used in every mount error.
"""

# The PATH a container's command and a hook start with when none is given: the
# standard directories, no relative entry.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# sched.h
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Namespace files under /proc/PID/ns, in the order a joiner must enter them: the user
# namespace first (it grants the capabilities for the rest), then mnt.
NAMESPACES = (
    ("user", CLONE_NEWUSER),
    ("mnt", CLONE_NEWNS),
)

# sys/mount.h
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

MOUNT_FLAG_NAMES = {
    MS_RDONLY: "MS_RDONLY", MS_NOSUID: "MS_NOSUID", MS_NODEV: "MS_NODEV",
    MS_NOEXEC: "MS_NOEXEC", MS_REMOUNT: "MS_REMOUNT", MS_NOATIME: "MS_NOATIME",
    MS_NODIRATIME: "MS_NODIRATIME", MS_BIND: "MS_BIND", MS_MOVE: "MS_MOVE", MS_REC: "MS_REC",
    MS_SILENT: "MS_SILENT", MS_PRIVATE: "MS_PRIVATE", MS_SLAVE: "MS_SLAVE",
    MS_SHARED: "MS_SHARED", MS_RELATIME: "MS_RELATIME",
}


def flags_str(flags: int, names: dict[int, str] = MOUNT_FLAG_NAMES) -> str:
    """Bit flags as `A|B`; unknown bits as hex."""
    out, rest = [], flags
    for bit, name in names.items():
        if flags & bit:
            out.append(name)
            rest &= ~bit
    if rest:
        out.append(hex(rest))
    return "|".join(out) or "0"


# linux/mount.h (mount_setattr)
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# linux/bpf.h
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2

# linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# linux/capability.h: capability name -> number.  Numbers above what the running kernel
# knows answer EINVAL to PR_CAPBSET_DROP, and are skipped.
CAPABILITIES = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
    "kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9,
    "net_bind_service": 10, "net_broadcast": 11, "net_admin": 12, "net_raw": 13,
    "ipc_lock": 14, "ipc_owner": 15, "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18,
    "sys_ptrace": 19, "sys_pacct": 20, "sys_admin": 21, "sys_boot": 22, "sys_nice": 23,
    "sys_resource": 24, "sys_time": 25, "sys_tty_config": 26, "mknod": 27, "lease": 28,
    "audit_write": 29, "audit_control": 30, "setfcap": 31, "mac_override": 32,
    "mac_admin": 33, "syslog": 34, "wake_alarm": 35, "block_suspend": 36, "audit_read": 37,
    "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}
# Dropped up to this number and beyond what the table names, so that a capability newer
# than this table is dropped too (the kernel answers EINVAL past its own last one).
CAP_LAST_KNOWN = 63

