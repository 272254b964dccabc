"""The launch modules' compiled code in one file, so that a launch imports them without
Python's per-module search.

Every `nvlaunch run` and every hook imports some 30 of the package's modules.  Through
the normal import system each one costs a search of sys.path, a spec, a stat of its
source, and an open, read and check of its .pyc: 1.6-2.9 ms of a ~38 ms `run` on the
2-core VM (A/B, same tree, interleaved).  The bundle holds the same code objects a .pyc
would (compile() of the source, under the source's own path), read with one open: an
index (marshal), then each module's marshalled code, unmarshalled only when it is
imported, straight from the bytes read.

- The file: `__pycache__/bundle.<cache tag>.marshal` in the package directory, written
  by build() (scripts/bootstrap.sh, setup.py's build_py), never at run time.  It holds
  the interpreter's bytecode magic number: another Python ignores it.
- A module is served from it only while its source file is the one it was compiled
  from: the same size and modification time (what a .pyc checks), or, where only the
  time differs (pip gives installed files the time of the install), the same content
  hash (what a hash-checked .pyc checks: one read of the source).  Otherwise the
  normal import system loads that one module, so an edited checkout runs its edited
  code.
- It is trusted as the .pyc files beside it are: taken only when it is a regular file
  owned by the package directory's owner and writable by no one else.

nvlaunch/__init__ calls install() once, before any other module of the package loads.
"""
import _imp
import marshal
import os
import stat
import sys

FORMAT = 3
# What goes in: the subpackages and top-level modules a launch or a hook loads (the
# set-up commands, images and renderers load normally).
PACKAGES = ("core", "host", "plan", "kernel", "exec", "oci", "frontends")
MODULES = ("cli",)


def _file(pkg_dir: str) -> str:
    return os.path.join(pkg_dir, "__pycache__", f"bundle.{sys.implementation.cache_tag}.marshal")


def _magic() -> bytes:
    return sys.modules["_frozen_importlib_external"].MAGIC_NUMBER


class BundleFinder:
    """A meta path finder and loader for the package's modules held in the bundle."""

    def __init__(self, pkg_dir: str, entries: dict, code: memoryview):
        self.parent = os.path.dirname(pkg_dir)
        self.entries = entries       # name -> (path under parent, is package, size, mtime,
                                     #          content hash, offset, length)
        self.code = code             # the marshalled code objects, one after another

    def find_spec(self, name: str, path=None, target=None):
        entry = self.entries.get(name)
        if entry is None:
            return None
        origin = os.path.join(self.parent, entry[0])
        try:
            st = os.stat(origin)
        except OSError:
            return None
        if st.st_size != entry[2] or (st.st_mtime_ns != entry[3] and not _same_hash(origin, entry[4])):
            return None              # edited since: the normal import system loads it
        spec = sys.modules["_frozen_importlib"].ModuleSpec(name, self, origin=origin,
                                                           is_package=entry[1])
        spec.has_location = True     # __file__ is the source, as for a .pyc
        if entry[1]:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        entry = self.entries[module.__name__]
        code = marshal.loads(self.code[entry[5]:entry[5] + entry[6]])
        # built elsewhere (a wheel): the file names of the code are where the sources are now
        _imp._fix_co_filename(code, module.__spec__.origin)  # type: ignore[attr-defined]  # typeshed lacks it
        exec(code, module.__dict__)


def _hash(source: bytes) -> bytes:
    return _imp.source_hash(sys.modules["_frozen_importlib_external"]._RAW_MAGIC_NUMBER, source)


def _same_hash(path: str, expected: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return _hash(f.read()) == expected
    except OSError:
        return False


def install(pkg_dir: str) -> BundleFinder | None:
    """Serve the package's modules from its bundle where there is a usable one."""
    try:
        fd = os.open(_file(pkg_dir), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022 \
                or st.st_uid != os.stat(pkg_dir).st_uid:
            return None
        data = memoryview(_read(fd, st.st_size))
        size = int.from_bytes(data[:4], "little")
        fmt, magic, entries = marshal.loads(data[4:4 + size])
        code = data[4 + size:]
        if fmt != FORMAT or magic != _magic() or \
                any(e[5] + e[6] > len(code) for e in entries.values()):
            return None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None
    finally:
        os.close(fd)
    finder = BundleFinder(pkg_dir, entries, code)
    sys.meta_path.insert(0, finder)
    return finder


def _read(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.read(fd, size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def sources(pkg_dir: str) -> dict:
    """dotted name -> source file, for what goes in the bundle."""
    out = {}
    for name in MODULES:
        out[f"nvlaunch.{name}"] = os.path.join(pkg_dir, name + ".py")
    for sub in PACKAGES:
        top = os.path.join(pkg_dir, sub)
        for dirpath, dirnames, files in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fname in sorted(files):
                if not fname.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fname), pkg_dir)[:-3]
                dotted = "nvlaunch." + rel.replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = os.path.join(dirpath, fname)
    return out


def build(pkg_dir: str) -> str:
    """Write the bundle of the package at `pkg_dir` (atomically); returns its path."""
    pkg_dir = os.path.abspath(pkg_dir)
    parent = os.path.dirname(pkg_dir)
    entries, codes, offset = {}, [], 0
    for name, path in sources(pkg_dir).items():
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            source = f.read()
        codes.append(marshal.dumps(compile(source, path, "exec", dont_inherit=True)))
        entries[name] = (os.path.relpath(path, parent), path.endswith("__init__.py"),
                         st.st_size, st.st_mtime_ns, _hash(source), offset, len(codes[-1]))
        offset += len(codes[-1])
    head = marshal.dumps((FORMAT, _magic(), entries))
    dest = _file(pkg_dir)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(4, "little") + head + b"".join(codes))
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest

