"""Unpacking image layers into a rootfs, every layer treated as hostile.

Each tar member is created inside the rootfs being built and nowhere else:

- a name is split into components; an absolute name, or one whose `..` climbs above the
  root, is refused (one error naming the member and the layer);
- parents are opened one component at a time, O_PATH|O_NOFOLLOW under the fd of the one
  before; a parent that is a symlink (a lower layer's /lib -> usr/lib) is resolved
  *inside* the rootfs (host.inroot.walk_open: an absolute target starts again at the
  root, `..` stops there), so no link a layer made ever leads a write out of it;
- everything is made with *at() calls under those fds, O_CREAT|O_EXCL|O_NOFOLLOW for
  files: nothing is opened through a link, nothing existing is written into;
- a hardlink must name a member already in the rootfs (not a directory), resolved the
  same way; device nodes and FIFOs are made only as root (mknod, never opened) and
  skipped otherwise; setuid/setgid bits and ownership are kept only as root;
- OCI whiteouts: `.wh.NAME` removes NAME from the layers below, `.wh..wh..opq` empties
  its directory of what the layers below put there; a whiteout naming `.`/`..` is refused;
- a size cap for the whole image (NVLAUNCH_IMAGE_MAX_BYTES, default 64 GiB) and for one
  file (NVLAUNCH_IMAGE_MAX_FILE_BYTES, default 16 GiB), checked on each member's header
  before any byte is written (a sparse 1 TiB member is refused up front), and a bound on
  every single read tarfile makes (a pax header claiming gigabytes is refused, not read);
- gzip and uncompressed layers (bzip2 and xz too); zstd only where Python has it.

Directories are made owner-writable while the image is unpacked and get their modes
and times at the end, deepest first, so an unprivileged pull never locks itself out.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile

from nvlaunch.core.errors import quote
from nvlaunch.host.inroot import walk_open
from nvlaunch.image.errors import ImageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

ENV_MAX = "NVLAUNCH_IMAGE_MAX_BYTES"
ENV_MAX_FILE = "NVLAUNCH_IMAGE_MAX_FILE_BYTES"
DEFAULT_MAX = 64 << 30
DEFAULT_MAX_FILE = 16 << 30
MAX_ENTRIES = 4_000_000          # tar members of one image: an inode bomb's bound
MAX_HEADER_READ = 16 << 20       # the most one read of tarfile's may ask (pax, long names)
CHUNK = 1 << 20
_DIR_CACHE = 512                 # open directory fds kept
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def limits_from(environ: Mapping[str, str]) -> tuple[int, int]:
    """(total, per-file) byte caps from the environment."""
    out = []
    for name, default in ((ENV_MAX, DEFAULT_MAX), (ENV_MAX_FILE, DEFAULT_MAX_FILE)):
        raw = environ.get(name, "")
        if not raw:
            out.append(default)
            continue
        if not (raw.isascii() and raw.isdigit() and len(raw) < 20) or int(raw) == 0:
            raise ImageError(f"{name}={quote(raw)}: expected a positive number of bytes")
        out.append(int(raw))
    return out[0], min(out[1], out[0])


class _Guard:
    """The decompressed layer as tarfile reads it: no single read larger than
    MAX_HEADER_READ (tarfile reads a pax or long-name header whole)."""

    def __init__(self, f: Any, shown: str):
        self.f, self.shown = f, shown

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_READ:
            raise ImageError(f"{self.shown}: a tar header larger than {MAX_HEADER_READ >> 20} MiB")
        data: bytes = self.f.read(n)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return int(self.f.seek(pos, whence))

    def tell(self) -> int:
        return int(self.f.tell())


def decompressed(f: IO[bytes], shown: str) -> Any:
    """`f` (a seekable layer blob) decompressed by what its first bytes say it is."""
    magic = f.read(6)
    f.seek(0)
    if magic[:2] == b"\x1f\x8b":
        import gzip
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        try:
            from compression import zstd  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ImageError(f"{shown}: a zstd-compressed layer: not supported (this Python has "
                             "no zstd; Python 3.14 has)") from None
        return zstd.ZstdFile(f)
    if magic[:3] == b"BZh":
        import bz2
        return bz2.BZ2File(f)
    if magic == b"\xfd7zXZ\x00":
        import lzma
        return lzma.LZMAFile(f)
    return f


def _parts(name: str, shown: str, what: str = "member") -> list[str]:
    if name.startswith("/"):
        raise ImageError(f"{shown}: {what} {quote(name)}: an absolute name (refused)")
    out: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not out:
                raise ImageError(f"{shown}: {what} {quote(name)}: leads out of the rootfs (refused)")
            out.pop()
        else:
            out.append(p)
    return out


class Unpacker:
    """Layers applied in order onto the directory `root` (a new, empty one)."""

    def __init__(self, root: str, limits: tuple[int, int], as_root: bool | None = None):
        self.rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.max_total, self.max_file = limits
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.total = 0
        self.entries = 0
        self.dirs: dict[str, int] = {}
        self.dir_meta: dict[str, tuple[int, int]] = {}
        self.current: set[str] = set()
        self.skipped: dict[str, int] = {}
        self.stale = False

    def close(self) -> None:
        self._forget()
        os.close(self.rootfd)

    # ---- directories ------------------------------------------------------------------

    def _forget(self) -> None:
        """Close the cached directory fds: only between members (a member's own fds stay
        valid while it is made), after a directory or link was removed (the cache may
        name what is gone) or when it grew past _DIR_CACHE."""
        self.stale = False
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _dir(self, parts: list[str], create: bool) -> int | None:
        """An O_PATH fd of the directory `parts` names inside the root, made (0700 until
        finish) where missing when `create`; None when missing and not `create`."""
        if not parts:
            return self.rootfd
        key = "/".join(parts)
        fd = self.dirs.get(key)
        if fd is not None:
            return fd
        parent = self._dir(parts[:-1], create)
        if parent is None:
            return None
        comp = parts[-1]
        try:
            fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(comp, 0o700, dir_fd=parent)
            self.dir_meta.setdefault(key, (0o755, -1))
            self.current.add(key)
            fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            os.close(fd)
            try:        # a link a layer made: followed inside the root, never out of it
                fd = walk_open(self.rootfd, key, os.O_PATH | os.O_DIRECTORY)
            except FileNotFoundError:
                if not create:
                    return None
                raise OSError(errno.ENOENT, "a parent is a dangling symlink", key) from None
        elif not stat.S_ISDIR(mode):
            os.close(fd)
            if not create:
                return None
            raise OSError(errno.ENOTDIR, "a parent is not a directory", key)
        self.dirs[key] = fd
        return fd

    def _remove(self, parent: int, comp: str) -> bool:
        """Remove `comp` under `parent` (a directory with all it holds), never through a
        link.  False when there was nothing."""
        try:
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            self.stale = True
            _rmtree_at(parent, comp)
        else:
            self.stale = self.stale or stat.S_ISLNK(st.st_mode)
            os.unlink(comp, dir_fd=parent)
        return True

    # ---- layers -----------------------------------------------------------------------

    def layer(self, blob: IO[bytes], shown: str) -> None:
        """Apply one layer (a seekable blob, compressed or not)."""
        self.current = set()
        stream = decompressed(blob, shown)
        try:
            try:
                guard: Any = _Guard(stream, shown)
                tar = tarfile.open(fileobj=guard, mode="r:", encoding="utf-8", errors="surrogateescape")
            except tarfile.ReadError as err:
                if str(err) == "empty file":
                    return
                raise ImageError(f"{shown}: not a tar archive: {err}") from None
            except (OSError, EOFError) as err:     # gzip, bz2, lzma: not what it claims
                raise ImageError(f"{shown}: a broken compressed stream: {err}") from None
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, EOFError, ValueError) as err:
                    raise ImageError(f"{shown}: a broken tar archive: {err}") from None
                except OSError as err:       # gzip/lzma: corrupt data
                    raise ImageError(f"{shown}: a broken compressed stream: {err}") from None
                if member is None:
                    break
                tar.members.clear()  # type: ignore[attr-defined]  # nothing is looked up later: keep no list
                self.entries += 1
                if self.entries > MAX_ENTRIES:
                    raise ImageError(f"{shown}: more than {MAX_ENTRIES} entries in the image")
                try:
                    self._member(tar, member, shown)
                except OSError as err:
                    raise ImageError(f"{shown}: {quote(member.name)}: "
                                     f"{err.strerror or err}") from None
        finally:
            if stream is not blob:
                stream.close()

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, shown: str) -> None:
        if self.stale or len(self.dirs) > _DIR_CACHE:
            self._forget()
        parts = _parts(m.name, shown)
        if not parts:
            return                            # the root itself: it stays 0755
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts, shown)
            return
        key = "/".join(parts)
        if m.isreg() and m.size > self.max_file:
            raise ImageError(f"{shown}: {quote(m.name)}: {m.size} bytes, more than the "
                             f"{self.max_file} bytes one file may have ({ENV_MAX_FILE})")
        if m.isreg() and self.total + m.size > self.max_total:
            raise ImageError(f"{shown}: {quote(m.name)}: the image unpacks to more than "
                             f"{self.max_total} bytes ({ENV_MAX})")
        if (m.ischr() or m.isblk() or m.isfifo()) and not self.as_root:
            kind = "fifo" if m.isfifo() else "device"
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.ischr() or m.isblk()
                or m.isfifo()):
            self.skipped["other"] = self.skipped.get("other", 0) + 1
            return
        parent = self._dir(parts[:-1], True)
        assert parent is not None
        perm = m.mode & (0o7777 if self.as_root else 0o1777)
        if m.isdir():
            try:
                st = os.stat(base, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._remove(parent, base)
                st = None
            if st is None:
                os.mkdir(base, 0o700, dir_fd=parent)
            self.current.add(key)
            self._own(parent, base, m)
            self.dir_meta[key] = (perm, int(m.mtime))
            return
        if m.islnk():
            self._hardlink(parent, base, key, m, shown)
            return
        self._remove(parent, base)
        self.current.add(key)
        if m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
        elif m.isreg():
            self._file(tar, m, parent, base, perm, shown)
            return
        elif m.isfifo():
            os.mkfifo(base, perm, dir_fd=parent)
        else:
            ftype = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, ftype | perm, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        self._own(parent, base, m)
        if not m.issym():
            os.chmod(base, perm, dir_fd=parent)     # not a link: fchmodat cannot follow one
        os.utime(base, ns=(int(m.mtime) * 10**9,) * 2, dir_fd=parent, follow_symlinks=False)

    def _own(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        if self.as_root:
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, base: str,
              perm: int, shown: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            src = tar.extractfile(m)
            left = m.size
            while src is not None and left > 0:
                try:
                    chunk = src.read(min(CHUNK, left))
                except (tarfile.TarError, EOFError) as err:
                    raise ImageError(f"{shown}: {quote(m.name)}: {err}") from None
                if not chunk:
                    raise ImageError(f"{shown}: {quote(m.name)}: the layer ends inside this file")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(chunk)
            self.total += m.size
            if self.as_root:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, perm)
            os.utime(fd, ns=(int(m.mtime) * 10**9,) * 2)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, key: str, m: tarfile.TarInfo, shown: str) -> None:
        target = _parts(m.linkname, shown, "hardlink target")
        sparent = self._dir(target[:-1], False) if target else None
        if not target or sparent is None:
            raise ImageError(f"{shown}: {quote(m.name)}: hardlink to {quote(m.linkname)}, "
                             "which is not in the image")
        try:
            sst = os.stat(target[-1], dir_fd=sparent, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(f"{shown}: {quote(m.name)}: hardlink to {quote(m.linkname)}, "
                             "which is not in the image") from None
        if stat.S_ISDIR(sst.st_mode):
            raise ImageError(f"{shown}: {quote(m.name)}: hardlink to a directory (refused)")
        try:
            dst = os.stat(base, dir_fd=parent, follow_symlinks=False)
            if (dst.st_dev, dst.st_ino) == (sst.st_dev, sst.st_ino):
                return
        except FileNotFoundError:
            pass
        self._remove(parent, base)
        os.link(target[-1], base, src_dir_fd=sparent, dst_dir_fd=parent, follow_symlinks=False)
        self.current.add(key)

    def _whiteout(self, parts: list[str], shown: str) -> None:
        base = parts[-1]
        parent = self._dir(parts[:-1], False)
        if base == OPAQUE:
            if parent is None:
                return
            prefix = "/".join(parts[:-1])
            for name in _names(parent):
                if (f"{prefix}/{name}" if prefix else name) not in self.current:
                    self._remove(parent, name)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return                          # aufs metadata (.wh..wh.plnk, .wh..wh.aufs)
        victim = base[len(WHITEOUT):]
        if victim in ("", ".", ".."):
            raise ImageError(f"{shown}: whiteout {quote('/'.join(parts))}: names no file (refused)")
        if parent is not None:
            self._remove(parent, victim)

    def finish(self) -> None:
        """Directory modes and times, deepest first, each dir opened inside the root."""
        self._forget()
        for key in sorted(self.dir_meta, key=lambda k: k.count("/"), reverse=True):
            mode, mtime = self.dir_meta[key]
            try:
                fd = walk_open(self.rootfd, key, os.O_PATH | os.O_NOFOLLOW)
            except OSError:
                continue                    # whited out, replaced by a file, ...
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    continue
                path = f"/proc/self/fd/{fd}"
                os.chmod(path, mode)
                if mtime >= 0:
                    os.utime(path, ns=(mtime * 10**9,) * 2)
            finally:
                os.close(fd)


def _names(dirfd: int) -> list[str]:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _rmtree_at(parent: int, comp: str) -> None:
    """rm -rf of the directory `comp` under `parent`, never following a link; directories
    an unprivileged owner cannot list or empty are made so first."""
    try:
        fd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except PermissionError:
        os.chmod(comp, 0o700, dir_fd=parent)
        fd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if os.fstat(fd).st_mode & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
        for name in os.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, name)
            else:
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(comp, dir_fd=parent)


def remove_tree(path: str) -> None:
    """rm -rf `path` (a directory of the cache) the way _rmtree_at does; nothing if absent."""
    parent, name = os.path.split(path.rstrip("/"))
    try:
        pfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(pfd, name)
        else:
            os.unlink(name, dir_fd=pfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(pfd)
