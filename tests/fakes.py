"""A recording fake of nvlaunch.kernel.real.RealKernel for call-sequence unit tests.

Mount-type calls are recorded, not made; openat2 answers ENOSYS so the pure-Python
in-root resolver is what gets exercised; `fail_on(name, n, errno)` makes the n-th call
of `name` raise OSError.  File operations the executors do through `os` happen for real
in the test's temporary directory.
"""
import errno as _errno
import os


class FakeKernel:
    def __init__(self):
        self.calls: list = []
        self._fail: dict = {}

    def fail_on(self, name: str, nth: int = 1, err: int = _errno.EPERM):
        self._fail[name] = (nth, err)

    def _record(self, name, *args):
        self.calls.append((name, args))
        if name in self._fail:
            nth, err = self._fail[name]
            if sum(1 for c in self.calls if c[0] == name) == nth:
                raise OSError(err, os.strerror(err), args[1] if len(args) > 1 else None)

    def openat2(self, dirfd, path, flags, mode, resolve):
        raise OSError(_errno.ENOSYS, "Function not implemented")

    def mount(self, source, target, fstype, flags, data):
        self._record("mount", source, self._where(target), fstype, flags, data)

    def bind_mount(self, source, target, flags):
        self._record("bind_mount", source, self._where(target), flags)

    def remount_bind(self, target, flags):
        self._record("remount_bind", self._where(target), flags)

    def umount2(self, target, flags):
        self._record("umount2", self._where(target), flags)

    def write_file(self, path, data):
        self._record("write_file", path, data)

    @staticmethod
    def _where(target: str) -> str:
        """A /proc/self/fd/N target as the path it names (what the fd was opened on)."""
        if target.startswith("/proc/self/fd/"):
            return os.readlink(target)
        return target

    def names(self):
        return [c[0] for c in self.calls]
