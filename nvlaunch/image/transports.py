"""Where images come from: an OCI layout directory, an OCI or docker archive (a tar file),
a registry (HTTP API v2, registry.py).  Each source gives the image manifest (one
platform's: an index or manifest list is resolved to linux on this machine's
architecture) and the blobs it names; the cache verifies every blob's digest and size.

    src = cache.open_source(ref)
    manifest, digest = src.manifest()       # the bytes, sha256:HEX
    with src.blob(descriptor) as f: ...     # a stream of the blob (read(n))
"""
from __future__ import annotations

import hashlib
import json
import os
import stat

from nvlaunch.core.errors import quote
from nvlaunch.image.errors import ImageError
from nvlaunch.image.reference import Reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

MAX_JSON = 8 << 20               # a manifest, index or config: more is no image of ours
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
_HEX = frozenset("0123456789abcdef")
REF_NAME = "org.opencontainers.image.ref.name"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object, where: str) -> str:
    """A sha256:HEX digest (the only algorithm taken), else ImageError."""
    if not isinstance(digest, str):
        raise ImageError(f"{where}: no digest")
    alg, _, hexpart = digest.partition(":")
    if alg != "sha256" or len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise ImageError(f"{where}: {quote(digest)}: not a sha256 digest (the only kind supported)")
    return digest


def check_descriptor(desc: object, where: str) -> dict[str, Any]:
    if not isinstance(desc, dict):
        raise ImageError(f"{where}: not a descriptor object")
    check_digest(desc.get("digest"), where)
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{where}: no valid size")
    return desc


def load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ImageError(f"{where}: not valid JSON: {err}") from None


def media_type(doc: Any, fallback: str = "") -> str:
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(mt, str) and mt:
        return mt
    if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
        return "schema1"
    if isinstance(doc, dict) and "manifests" in doc:
        return OCI_INDEX
    if isinstance(doc, dict) and "layers" in doc:
        return fallback if fallback in MANIFESTS else OCI_MANIFEST
    return fallback


def parse_manifest(data: bytes, where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config descriptor, layer descriptors) of an image manifest."""
    doc = load_json(data, where)
    mt = media_type(doc)
    if mt == "schema1" or "schema1" in mt or "prettyjws" in mt:
        raise ImageError(f"{where}: a docker schema 1 manifest: not supported (re-push the image)")
    if mt not in MANIFESTS:
        raise ImageError(f"{where}: {quote(mt)}: not an image manifest")
    config = check_descriptor(doc.get("config"), f"{where}: config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{where}: no layers")
    return config, [check_descriptor(d, f"{where}: layer {i}") for i, d in enumerate(layers)]


def choose_platform(doc: Any, where: str) -> dict[str, Any]:
    """The descriptor of an index's (manifest list's) image for linux on this machine."""
    arch = _ARCH.get(os.uname().machine, os.uname().machine)
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ImageError(f"{where}: an index without manifests")
    seen = []
    for i, desc in enumerate(entries):
        plat = desc.get("platform") if isinstance(desc, dict) else None
        if isinstance(plat, dict):
            seen.append(f"{plat.get('os')}/{plat.get('architecture')}")
            if plat.get("os") == "linux" and plat.get("architecture") == arch:
                return check_descriptor(desc, f"{where}: manifest {i}")
    raise ImageError(f"{where}: no image for linux/{arch} (it has {', '.join(seen) or 'none'})")


class Source:
    """A source of one image."""
    ref: Reference
    shown: str

    def manifest(self) -> tuple[bytes, str]:
        raise NotImplementedError

    def blob(self, desc: dict[str, Any]) -> Any:
        """A readable stream (a context manager) of the blob `desc` names."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def resolve_index(self, data: bytes, digest: str) -> tuple[bytes, str]:
        """Through an index to one platform's manifest, its digest checked."""
        for _ in range(4):                      # an index of indexes, at most so deep
            doc = load_json(data, self.shown)
            if media_type(doc) not in INDEXES:
                return data, digest
            desc = choose_platform(doc, self.shown)
            data = self.read_small(desc)
            digest = desc["digest"]
        raise ImageError(f"{self.shown}: indexes nested too deep")

    def read_small(self, desc: dict[str, Any]) -> bytes:
        """A JSON blob whole, its size and digest checked."""
        if desc["size"] > MAX_JSON:
            raise ImageError(f"{self.shown}: {desc['digest']}: {desc['size']} bytes, too big for "
                             "a manifest or config")
        with self.blob(desc) as f:
            data = f.read(desc["size"] + 1)
        if len(data) != desc["size"] or sha256_digest(data) != desc["digest"]:
            raise ImageError(f"{self.shown}: blob {desc['digest']}: its content does not match its "
                             "digest and size")
        return bytes(data)


def _open_regular(path: str, shown: str) -> IO[bytes]:
    """`path` opened for reading, once checked to be a regular file (no FIFO waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise ImageError(f"{shown}: {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{shown}: {path}: not a regular file")
    return os.fdopen(fd, "rb")


def _select_in_index(index: Any, tag: str, shown: str) -> dict[str, Any]:
    """An OCI layout's index.json entry for `tag` (its only entry when no tag is given)."""
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ImageError(f"{shown}: index.json lists no manifests")
    if not tag:
        if len(entries) != 1:
            raise ImageError(f"{shown}: {len(entries)} images in the layout: name one with :TAG")
        return check_descriptor(entries[0], f"{shown}: index.json")
    for desc in entries:
        ann = desc.get("annotations") if isinstance(desc, dict) else None
        if isinstance(ann, dict) and ann.get(REF_NAME) == tag:
            return check_descriptor(desc, f"{shown}: index.json")
    raise ImageError(f"{shown}: no image tagged {quote(tag)} in the layout")


class OciLayout(Source):
    def __init__(self, ref: Reference):
        self.ref, self.shown = ref, ref.name
        if not os.path.isdir(ref.path):
            raise ImageError(f"{self.shown}: {ref.path}: no such directory")

    def manifest(self) -> tuple[bytes, str]:
        with _open_regular(os.path.join(self.ref.path, "index.json"), self.shown) as f:
            index = load_json(f.read(MAX_JSON), f"{self.shown}: index.json")
        desc = _select_in_index(index, self.ref.tag, self.shown)
        return self.resolve_index(self.read_small(desc), desc["digest"])

    def blob(self, desc: dict[str, Any]) -> IO[bytes]:
        alg, _, hexpart = desc["digest"].partition(":")
        return _open_regular(os.path.join(self.ref.path, "blobs", alg, hexpart), self.shown)


class _Archive(Source):
    """A tar file's members by normalized name."""

    def __init__(self, ref: Reference):
        import tarfile
        from nvlaunch.image.extract import _Guard
        self.ref, self.shown = ref, ref.name
        self.file = _open_regular(ref.path, self.shown)
        try:
            guard: Any = _Guard(self.file, self.shown)
            self.tar = tarfile.open(fileobj=guard, mode="r:")
            self.members = {}
            for m in self.tar:
                name = os.path.normpath(m.name).lstrip("/")
                if m.isreg():
                    self.members[name] = m
        except tarfile.TarError as err:
            self.file.close()
            raise ImageError(f"{self.shown}: not a tar archive: {err}") from None
        except BaseException:
            self.file.close()
            raise

    def member(self, name: str) -> Any:
        m = self.members.get(os.path.normpath(name).lstrip("/"))
        if m is None:
            raise ImageError(f"{self.shown}: no {quote(name)} in the archive")
        return self.tar.extractfile(m)

    def read_member(self, name: str) -> bytes:
        m = self.members.get(os.path.normpath(name).lstrip("/"))
        if m is not None and m.size > MAX_JSON:
            raise ImageError(f"{self.shown}: {quote(name)}: too big")
        data: bytes = self.member(name).read()
        return data

    def close(self) -> None:
        self.tar.close()
        self.file.close()


class OciArchive(_Archive):
    def manifest(self) -> tuple[bytes, str]:
        index = load_json(self.read_member("index.json"), f"{self.shown}: index.json")
        desc = _select_in_index(index, self.ref.tag, self.shown)
        return self.resolve_index(self.read_small(desc), desc["digest"])

    def blob(self, desc: dict[str, Any]) -> Any:
        alg, _, hexpart = desc["digest"].partition(":")
        return self.member(f"blobs/{alg}/{hexpart}")


class DockerArchive(_Archive):
    """`docker save` output: manifest.json names the config and the layer files; the
    image manifest is made here (schema 2), each layer's digest computed."""

    def manifest(self) -> tuple[bytes, str]:
        from nvlaunch.image.reference import parse
        entries = load_json(self.read_member("manifest.json"), f"{self.shown}: manifest.json")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ImageError(f"{self.shown}: manifest.json lists no images")
        ref = self.ref
        if ref.index >= 0:
            if ref.index >= len(entries):
                raise ImageError(f"{self.shown}: the archive holds {len(entries)} images")
            entry = entries[ref.index]
        elif ref.repo:
            want = f"docker://{ref.repo}:{ref.tag}"
            found = [e for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str)
                     and _normal(parse, t) == want]
            if not found:
                raise ImageError(f"{self.shown}: no image {ref.repo}:{ref.tag} in the archive")
            entry = found[0]
        elif len(entries) == 1:
            entry = entries[0]
        else:
            raise ImageError(f"{self.shown}: {len(entries)} images in the archive: name one "
                             "with :NAME:TAG or :@N")
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                or not all(isinstance(n, str) for n in layer_names):
            raise ImageError(f"{self.shown}: manifest.json: no Config and Layers")
        config = self.read_member(config_name)
        self.paths = {sha256_digest(config): config_name}
        layers = []
        for name in layer_names:
            h = hashlib.sha256()
            size = 0
            with self.member(name) as f:
                head = f.read(2)
                h.update(head)
                size += len(head)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            self.paths[digest] = name
            layers.append({"mediaType": DOCKER_LAYER + (".gzip" if head == b"\x1f\x8b" else ""),
                           "size": size, "digest": digest})
        doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
               "config": {"mediaType": DOCKER_CONFIG, "size": len(config),
                          "digest": sha256_digest(config)},
               "layers": layers}
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return data, sha256_digest(data)

    def blob(self, desc: dict[str, Any]) -> Any:
        name = getattr(self, "paths", {}).get(desc["digest"])
        if name is None:
            raise ImageError(f"{self.shown}: no blob {desc['digest']} in the archive")
        return self.member(name)


def _normal(parse: Any, repo_tag: str) -> str:
    try:
        ref = parse("docker://" + repo_tag)
    except Exception:  # noqa: BLE001 - a RepoTag we cannot read matches nothing
        return ""
    return str(ref.name)
