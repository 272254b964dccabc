"""The image cache: content-addressed, per user, safe against concurrent and killed pulls.

    $XDG_CACHE_HOME/nvlaunch/images   (default ~/.cache/nvlaunch/images), mode 0700
      index.json              {"images": {NAME: {"digest", "config", "rootfs", "size", ...}}}
      blobs/sha256/HEX        manifests and configs, kept by digest
      rootfs/HEX/             one unpacked tree per image manifest digest
      tmp/                    what a pull is making: layers being fetched, a tree being unpacked
      lock                    flock()ed by whoever changes the cache

A pull holds the lock from start to end, so two pulls of one image take turns (the
second finds it cached).  Nothing a pull makes is visible before it is whole: layers
are fetched into tmp/ and checked against their digest and size, the tree is unpacked
in tmp/ and renamed into rootfs/ once complete, and only then is index.json replaced
(core.files.replace_in_dir: a reader sees the old index or the new one).  A failed pull
removes its tmp/ entries; one that was killed leaves them to the next pull, images or
rmi, which removes everything in tmp/ (it holds the lock: nobody else is writing there).
Layer blobs are not kept once unpacked (the tree is what runs).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time

from nvlaunch.core import jsonread
from nvlaunch.core.errors import quote
from nvlaunch.core.files import replace_in_dir, temp_name
from nvlaunch.image.config import Image, config_from_json
from nvlaunch.image.errors import ImageError
from nvlaunch.image.extract import Unpacker, limits_from, remove_tree
from nvlaunch.image.reference import Reference, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from typing import Any

    from nvlaunch.image.transports import Source

INDEX = "index.json"
CHUNK = 1 << 20


def default_root(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    if not base or not base.startswith("/"):
        home = env.get("HOME", "")
        if not home or not home.startswith("/"):
            import pwd
            try:
                home = pwd.getpwuid(os.geteuid()).pw_dir
            except KeyError:
                raise ImageError("no home directory for the image cache: set XDG_CACHE_HOME") from None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "nvlaunch", "images")


class Cache:
    def __init__(self, root: str):
        self.root = root

    @classmethod
    def default(cls) -> Cache:
        return cls(default_root())

    # ---- the directory and its lock ---------------------------------------------------

    def _ensure(self) -> None:
        try:
            os.makedirs(self.root, 0o700, exist_ok=True)
            st = os.lstat(self.root)
            if st.st_uid != os.geteuid():
                raise ImageError(f"image cache {self.root}: owned by uid {st.st_uid}, not by you")
            for sub in ("blobs/sha256", "rootfs", "tmp"):
                os.makedirs(os.path.join(self.root, sub), 0o700, exist_ok=True)
        except OSError as err:
            raise ImageError(f"image cache {self.root}: {err.strerror}") from None

    def locked(self, wait: bool = True) -> AbstractContextManager[bool]:
        """The cache's lock held for a `with` block (True); with wait=False, False at once
        when someone else holds it."""
        from contextlib import contextmanager

        @contextmanager
        def hold() -> Iterator[bool]:
            self._ensure()
            fd = os.open(os.path.join(self.root, "lock"),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                self._clean_tmp()
                yield True
            finally:
                os.close(fd)
        return hold()

    def _clean_tmp(self) -> None:
        """Everything in tmp/ (called with the lock held: what is there was left by a pull
        that was killed)."""
        tmp = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp):
            remove_tree(os.path.join(tmp, name))
        # a pull killed between its last rename and the index: what no entry names
        images = self.index().values()
        used = {str(e.get(k, "")).partition(":")[2] for e in images for k in ("digest", "config")}
        for sub in ("rootfs", "blobs/sha256"):
            for name in os.listdir(os.path.join(self.root, sub)):
                if name not in used and not name.startswith("."):
                    remove_tree(os.path.join(self.root, sub, name))

    # ---- the index --------------------------------------------------------------------

    def index(self) -> dict[str, dict[str, Any]]:
        try:
            with open(os.path.join(self.root, INDEX), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise ImageError(f"image cache {self.root}/{INDEX}: {err.strerror}") from None
        try:
            doc = jsonread.loads(raw) if raw.strip() else {}
        except ValueError as err:
            raise ImageError(f"image cache {self.root}/{INDEX}: not valid JSON: {err}") from None
        images = doc.get("images") if isinstance(doc, dict) else None
        return {k: v for k, v in images.items() if isinstance(v, dict)} if isinstance(images, dict) else {}

    def _write_index(self, images: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": 1, "images": images}, indent=1, sort_keys=True).encode() + b"\n"
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            replace_in_dir(fd, INDEX, data, 0o600, sync=True)
        finally:
            os.close(fd)

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", digest.partition(":")[2])

    def rootfs_path(self, digest: str) -> str:
        return os.path.join(self.root, "rootfs", digest.partition(":")[2])

    def image(self, name: str, entry: dict[str, Any]) -> Image | None:
        """The Image of an index entry, None when its parts are gone."""
        digest, config = entry.get("digest"), entry.get("config")
        if not isinstance(digest, str) or not isinstance(config, str):
            return None
        rootfs = self.rootfs_path(digest)
        try:
            with open(self.blob_path(config), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if not os.path.isdir(rootfs):
            return None
        try:
            cfg = config_from_json(jsonread.loads(data))
        except ValueError:
            return None
        return Image(name=name, digest=digest, rootfs=rootfs, config=cfg)

    def lookup(self, ref: Reference) -> Image | None:
        """The cached image `ref` names, None when it must be pulled: not in the cache,
        or a local source (a layout, an archive) that changed since it was pulled."""
        entry = self.index().get(ref.name)
        if entry is None:
            return None
        if ref.transport != "docker" and entry.get("source") != _source_stamp(ref):
            return None
        return self.image(ref.name, entry)

    # ---- pull -------------------------------------------------------------------------

    def pull(self, ref: Reference) -> Image:
        from nvlaunch.image.transports import parse_manifest
        limits = limits_from(os.environ)
        with self.locked():
            stamp = _source_stamp(ref) if ref.transport != "docker" else None
            src = open_source(ref)
            made: list[str] = []
            try:
                manifest, digest = src.manifest()
                config_desc, layers = parse_manifest(manifest, ref.name)
                config = src.read_small(config_desc)
                try:
                    config_from_json(json.loads(config))
                except ValueError as err:
                    raise ImageError(f"{ref.name}: the image config: {err}") from None
                rootfs = self.rootfs_path(digest)
                size = None
                if not os.path.isdir(rootfs):
                    size = self._unpack(src, ref, layers, rootfs, limits, made)
                self._store_blob(digest, manifest)
                self._store_blob(config_desc["digest"], config)
            finally:
                for path in made:
                    remove_tree(path)
                src.close()
            images = self.index()
            old = images.get(ref.name)
            if size is None:
                size = next((e.get("size") for e in images.values() if e.get("digest") == digest), 0)
            images[ref.name] = {"digest": digest, "config": config_desc["digest"], "size": size,
                                "rootfs": rootfs, "pulled": int(time.time()),
                                **({"source": stamp} if stamp is not None else {})}
            self._write_index(images)
            if old and old.get("digest") != digest:
                self._collect(images, old)
        image = self.image(ref.name, images[ref.name])
        if image is None:
            raise ImageError(f"{ref.name}: the cache lost the image as it was pulled")
        return image

    def _store_blob(self, digest: str, data: bytes) -> None:
        path = self.blob_path(digest)
        if os.path.exists(path):
            return
        fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            replace_in_dir(fd, os.path.basename(path), data, 0o600, sync=True)
        finally:
            os.close(fd)

    def _fetch(self, src: Source, desc: dict[str, Any], made: list[str]) -> str:
        """A layer into tmp/, its digest and size checked; the file's path."""
        path = os.path.join(self.root, "tmp", temp_name("layer"))
        made.append(path)
        h = hashlib.sha256()
        size, want = 0, desc["size"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with src.blob(desc) as f:
                while True:
                    chunk = f.read(min(CHUNK, want + 1 - size))
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > want:
                        break
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        except OSError as err:
            raise ImageError(f"{src.shown}: layer {desc['digest']}: {err.strerror or err}") from None
        finally:
            os.close(fd)
        if size != want or "sha256:" + h.hexdigest() != desc["digest"]:
            raise ImageError(f"{src.shown}: layer {desc['digest']}: its content does not match "
                             f"its digest and size ({size} bytes{'+' if size > want else ''}, "
                             f"{want} expected)")
        return path

    def _unpack(self, src: Source, ref: Reference, layers: list[dict[str, Any]], rootfs: str,
                limits: tuple[int, int], made: list[str]) -> int:
        tree = os.path.join(self.root, "tmp", temp_name("rootfs"))
        made.append(tree)
        os.mkdir(tree, 0o755)
        unpacker = Unpacker(tree, limits)
        try:
            for i, desc in enumerate(layers):
                path = self._fetch(src, desc, made)
                shown = f"{ref.name}: layer {i + 1} ({desc['digest'][:19]})"
                with open(path, "rb") as f:
                    unpacker.layer(f, shown)
                os.unlink(path)
            unpacker.finish()
        finally:
            unpacker.close()
        os.chmod(tree, 0o755)
        os.rename(tree, rootfs)
        return unpacker.total

    # ---- rmi, images ------------------------------------------------------------------

    def remove(self, text: str) -> list[str]:
        """Remove the image `text` names (a reference or a digest, `sha256:HEX` or a unique
        prefix of HEX of 4 or more); the names removed."""
        with self.locked():
            images = self.index()
            names = self.match(images, text)
            gone = [images.pop(n) for n in names]
            self._write_index(images)
            for entry in gone:
                self._collect(images, entry)
        return names

    @staticmethod
    def match(images: dict[str, dict[str, Any]], text: str) -> list[str]:
        from nvlaunch.image.reference import is_reference
        if is_reference(text):
            name = parse(text).name
            if name in images:
                return [name]
            raise ImageError(f"{quote(text)}: no such image in the cache")
        hexpart = text[7:] if text.startswith("sha256:") else text
        if len(hexpart) >= 4 and all(c in "0123456789abcdef" for c in hexpart):
            names = [n for n, e in images.items()
                     if str(e.get("digest", "")).partition(":")[2].startswith(hexpart)]
            if len({images[n].get("digest") for n in names}) > 1:
                raise ImageError(f"{quote(text)}: names more than one image (give more digits)")
            if names:
                return names
        raise ImageError(f"{quote(text)}: no such image in the cache (name it as it was pulled, "
                         "or by digest)")

    def _collect(self, images: dict[str, dict[str, Any]], entry: dict[str, Any]) -> None:
        """Remove the tree and blobs of `entry` that no image in `images` uses."""
        digest, config = entry.get("digest"), entry.get("config")
        used = {e.get("digest") for e in images.values()} | {e.get("config") for e in images.values()}
        if isinstance(digest, str) and digest not in used:
            remove_tree(self.rootfs_path(digest))
            _unlink(self.blob_path(digest))
        if isinstance(config, str) and config not in used:
            _unlink(self.blob_path(config))

    def listing(self) -> list[dict[str, Any]]:
        """Every cached image: name, digest, size, pulled, rootfs (and clean-up of what a
        killed pull left, when nobody holds the lock)."""
        if os.path.isdir(self.root):
            with self.locked(wait=False):
                pass
        out = []
        for name, entry in sorted(self.index().items()):
            out.append({"name": name, "digest": entry.get("digest"), "config": entry.get("config"),
                        "size": entry.get("size"), "pulled": entry.get("pulled"),
                        "rootfs": self.rootfs_path(str(entry.get("digest", "")))})
        return out


def open_source(ref: Reference) -> Source:
    """The Source of `ref`'s transport."""
    from nvlaunch.image import transports
    if ref.transport == "oci":
        return transports.OciLayout(ref)
    if ref.transport == "oci-archive":
        return transports.OciArchive(ref)
    if ref.transport == "docker-archive":
        return transports.DockerArchive(ref)
    from nvlaunch.image.registry import Registry
    return Registry(ref)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _source_stamp(ref: Reference) -> str:
    """What identifies a local source's current state: for a layout, its index.json's
    digest (a new tag or image changes it); for an archive, its size and mtime."""
    try:
        if ref.transport == "oci":
            with open(os.path.join(ref.path, "index.json"), "rb") as f:
                return "sha256:" + hashlib.sha256(f.read(8 << 20)).hexdigest()
        st = os.stat(ref.path)
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ImageError(f"{ref.name}: {ref.path}: no such file or directory") from None
        raise ImageError(f"{ref.name}: {ref.path}: {err.strerror}") from None
