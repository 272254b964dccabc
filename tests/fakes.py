"""The one recording fake of nvlaunch.kernel.real.RealKernel, for call-sequence unit tests.

Every call is recorded as (name, args).  `fail_on(name, nth, errno)` (or the constructor's
`fail={(name, nth): errno}`) makes the nth call of `name` raise OSError.

- Mount-type calls (mount, bind_mount, remount_bind, umount2, pivot_root,
  mount_setattr), process state (clone, setns, chdir, prctl, sethostname, setgroups,
  setgid, setuid) and writes to kernel files (write_file) are recorded, not made.  A mount or
  bind onto a target that does not exist fails with ENOENT, as the kernel's would.  An
  overlay mount is simulated by copying its lower and upper layers into the target
  (the test trees are small), a proc mount by a `driver` directory in its target, so
  that what an executor does after mounting them meets the tree it would meet.
- File operations (open, close, mkdir, symlink, unlink, rename, chmod, chown, ...)
  happen for real, in the test's temporary directory; with `virtual_files=True` open
  returns fake fds instead (for cgroup paths that do not exist here).
- openat2 answers ENOSYS, so the pure-Python in-root resolver is what gets exercised.
- The bpf calls answer from `progs` and `attach_flags`, as a cgroup with device
  programs attached would.
"""
import errno as _errno
import os
import shutil


class FakeKernel:
    def __init__(self, fail=None, progs=(10, 11), attach_flags=2, old_program=b"",
                 virtual_files=False):
        self.calls: list = []
        self.fail = dict(fail or {})
        self.counts: dict = {}
        self.progs = list(progs)
        self.attach_flags = attach_flags
        self.old_program = old_program
        self.virtual_files = virtual_files
        self.closed: list = []

    # -- recording and failing

    def fail_on(self, name: str, nth: int = 1, err: int = _errno.EPERM):
        self.fail[(name, nth)] = err

    def _record(self, name, *args):
        self.calls.append((name, args))
        n = self.counts[name] = self.counts.get(name, 0) + 1
        err = self.fail.get((name, n))
        if err:
            raise OSError(err, os.strerror(err))

    def names(self):
        return [c[0] for c in self.calls]

    MOUNT_CALLS = ("mount", "bind_mount", "remount_bind", "umount2", "pivot_root", "mount_setattr")
    CHANGES = MOUNT_CALLS + ("mkdir", "rmdir", "symlink", "unlink", "rename", "chmod", "chown",
                             "write_all", "write_file")

    def mounts(self):
        """The mount-type calls, in order."""
        return [c for c in self.calls if c[0] in self.MOUNT_CALLS]

    def mount_names(self):
        return [c[0] for c in self.mounts()]

    def changes(self):
        """Every call that would change the system (mounts and file writes)."""
        return [c for c in self.calls if c[0] in self.CHANGES]

    def named(self, name):
        return [args for n, args in self.calls if n == name]

    @staticmethod
    def _where(target) -> str:
        """A /proc/self/fd/N target as the path it names (what the fd was opened on)."""
        if isinstance(target, str) and target.startswith("/proc/self/fd/"):
            return os.readlink(target)
        return target

    @staticmethod
    def _must_exist(path: str) -> None:
        if not os.path.lexists(path):
            raise OSError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)

    # -- mounts: recorded, not made

    def mount(self, source, target, fstype, flags, data):
        where = self._where(target)
        self._record("mount", source, where, fstype, flags, data)
        if fstype is None and source is None:        # a propagation change
            return
        self._must_exist(where)
        if fstype == "overlay":
            opts = dict(o.split("=", 1) for o in (data or "").split(",") if "=" in o)
            layers = [p.replace("\\:", ":") for p in opts.get("lowerdir", "").split(":")]
            if "upperdir" in opts:
                layers.insert(0, opts["upperdir"])
            for layer in reversed(layers):           # the top layer is copied last
                shutil.copytree(layer, where, symlinks=True, dirs_exist_ok=True)
        elif fstype == "proc":
            os.makedirs(os.path.join(where, "driver"), exist_ok=True)

    def bind_mount(self, source, target, flags):
        where = self._where(target)
        self._record("bind_mount", source, where, flags)
        self._must_exist(source)
        self._must_exist(where)

    def remount_bind(self, target, flags):
        self._record("remount_bind", self._where(target), flags)

    def umount2(self, target, flags):
        self._record("umount2", self._where(target), flags)

    def mount_setattr(self, dirfd, path, flags, attr_set, attr_clr):
        self._record("mount_setattr", dirfd, path, flags, attr_set, attr_clr)

    def pivot_root(self, new_root, put_old):
        self._record("pivot_root", new_root, put_old)

    # -- process state: recorded, not made

    def clone(self, flags):
        """Recorded; a fake cannot make a process, so it answers ENOSYS after that."""
        self._record("clone", flags)
        raise OSError(_errno.ENOSYS, "Function not implemented")

    def setns(self, fd, nstype, path=None):
        self._record("setns", fd, nstype, path)

    def chdir(self, path):
        self._record("chdir", path)

    def chroot(self, path):
        self._record("chroot", path)

    def prctl(self, option, arg2):
        self._record("prctl", option, arg2)
        return 0

    def sethostname(self, name):
        self._record("sethostname", name)

    def setgroups(self, groups):
        self._record("setgroups", list(groups))

    def setgid(self, gid):
        self._record("setgid", gid)

    def setuid(self, uid):
        self._record("setuid", uid)

    def write_file(self, path, data):
        self._record("write_file", path, data)

    def openat2(self, dirfd, path, flags, mode, resolve):
        raise OSError(_errno.ENOSYS, "Function not implemented")

    # -- files: made, for real (or virtual fds)

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        self._record("open", path)
        if self.virtual_files:
            return 3
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def close(self, fd):
        self.closed.append(fd)
        if not self.virtual_files:
            os.close(fd)

    def dup(self, fd):
        return os.dup(fd)

    def write_all(self, fd, data):
        self._record("write_all", fd, len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def mkdir(self, path, mode=0o777, *, dir_fd=None):
        self._record("mkdir", path, mode)
        # made writable for us: root ignores the mode, the unprivileged tester would not
        os.mkdir(path, mode | 0o700, dir_fd=dir_fd)

    def rmdir(self, path, *, dir_fd=None):
        self._record("rmdir", path)
        os.rmdir(path, dir_fd=dir_fd)

    def symlink(self, target, path, *, dir_fd=None):
        self._record("symlink", target, path)
        os.symlink(target, path, dir_fd=dir_fd)

    def unlink(self, path, *, dir_fd=None):
        self._record("unlink", path)
        os.unlink(path, dir_fd=dir_fd)

    def rename(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        self._record("rename", src, dst)
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def chmod(self, path, mode):
        self._record("chmod", path, mode)
        os.chmod(path, mode)

    def chown(self, path, uid, gid):
        self._record("chown", path, uid, gid)
        os.chown(path, uid, gid)

    # -- device cgroup programs

    def bpf_prog_query(self, fd, attach_type, max_ids):
        self._record("bpf_prog_query", fd, attach_type, max_ids)
        return self.attach_flags, list(self.progs)

    def bpf_prog_get_fd_by_id(self, prog_id):
        self._record("bpf_prog_get_fd_by_id", prog_id)
        return 100 + prog_id

    def bpf_prog_xlated_insns(self, fd):
        self._record("bpf_prog_xlated_insns", fd)
        return self.old_program

    def bpf_prog_load(self, prog_type, insns, license, log_size):
        self._record("bpf_prog_load", prog_type, len(insns), license, log_size)
        return 200 + self.counts["bpf_prog_load"]

    def bpf_prog_attach(self, prog_fd, target_fd, attach_type, flags, replace_fd):
        self._record("bpf_prog_attach", prog_fd, target_fd, attach_type, flags, replace_fd)
