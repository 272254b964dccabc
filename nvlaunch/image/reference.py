"""Image references in the transport syntax of skopeo and podman.

    oci:DIR[:TAG]                    an OCI image layout directory
    oci-archive:FILE[:TAG]           the same, as a tar file
    docker-archive:FILE[:REF]        `docker save` output (REF: NAME[:TAG] or @N, the Nth image)
    docker://HOST/NAME[:TAG|@DIGEST] a registry (HTTP API v2); docker.io when HOST is left out

As in containers/image, DIR or FILE ends at the first colon (it cannot hold one).  Every
reference has one canonical `name` (paths made absolute, `:latest` added): the key the
cache keeps it under.
"""
from __future__ import annotations

import os

from nvlaunch.core.errors import UsageError, quote
from nvlaunch.core.records import record

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker")
DOCKER_HUB = "docker.io"
_HEX = frozenset("0123456789abcdef")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


@record
class Reference:
    transport: str          # one of TRANSPORTS
    path: str = ""          # oci, oci-archive, docker-archive: the absolute host path
    host: str = ""          # docker: the registry's host[:port]
    repo: str = ""          # docker: the repository (library/ added on docker.io); archive: NAME
    tag: str = ""           # the tag ("" for none: an archive or layout with one image)
    digest: str = ""        # docker: sha256:HEX when pinned
    index: int = -1         # docker-archive @N

    @property
    def name(self) -> str:
        """The canonical text of the reference: the cache's key."""
        if self.transport == "docker":
            at = f"@{self.digest}" if self.digest else f":{self.tag}"
            return f"docker://{self.host}/{self.repo}{at}"
        out = f"{self.transport}:{self.path}"
        if self.index >= 0:
            return f"{out}:@{self.index}"
        if self.repo:
            return f"{out}:{self.repo}:{self.tag or 'latest'}"
        return f"{out}:{self.tag}" if self.tag else out


def is_reference(text: str) -> bool:
    """Whether `text` is written as an image reference (a transport prefix), cheaply: no
    check that it is a valid one (parse says what is wrong)."""
    return text.startswith(("oci:", "oci-archive:", "docker-archive:", "docker://"))


def parse(text: str) -> Reference:
    """The Reference `text` names; UsageError saying what is wrong otherwise."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise UsageError(f"{quote(text)}: not an image reference (expected oci:DIR[:TAG], "
                         "oci-archive:FILE[:TAG], docker-archive:FILE[:REF] or docker://HOST/NAME[:TAG])")
    if transport == "docker":
        if not rest.startswith("//"):
            raise UsageError(f"{quote(text)}: a registry image is written docker://HOST/NAME[:TAG]")
        return _docker(text, rest[2:])
    path, _, tail = rest.partition(":")
    if not path:
        raise UsageError(f"{quote(text)}: no {'directory' if transport == 'oci' else 'file'} given")
    path = os.path.abspath(path)
    if transport == "docker-archive":
        if tail.startswith("@"):
            n = tail[1:]
            if not (n.isascii() and n.isdigit() and len(n) < 7):
                raise UsageError(f"{quote(text)}: @N must be an image index")
            return Reference(transport, path=path, index=int(n))
        if not tail:
            return Reference(transport, path=path)
        ref = _docker(text, tail, archive=True)
        return Reference(transport, path=path, repo=f"{ref.host}/{ref.repo}", tag=ref.tag)
    if tail and not _valid_tag(tail, ref_name=True):
        raise UsageError(f"{quote(text)}: {quote(tail)} is not a valid tag")
    return Reference(transport, path=path, tag=tail)


def _valid_tag(tag: str, ref_name: bool = False) -> bool:
    """A docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}); an OCI layout's ref.name may
    also hold / : @ + (the annotation's own grammar)."""
    if not tag or len(tag) > 128 or tag[0] in ".-":
        return False
    allowed = _TAG_CHARS | frozenset("/:@+") if ref_name else _TAG_CHARS
    return all(c in allowed for c in tag)


def _docker(text: str, rest: str, archive: bool = False) -> Reference:
    """HOST/NAME[:TAG|@DIGEST] as docker normalises it (docker.io, library/, :latest)."""
    digest = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        alg, _, hexpart = digest.partition(":")
        if alg != "sha256" or len(hexpart) != 64 or not set(hexpart) <= _HEX:
            raise UsageError(f"{quote(text)}: {quote(digest)} is not a sha256:HEX digest")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _valid_tag(tag):
            raise UsageError(f"{quote(text)}: {quote(tag)} is not a valid tag")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, repo = first, remainder
        if not set(host) <= _HOST_CHARS:
            raise UsageError(f"{quote(text)}: {quote(host)} is not a registry host")
    else:
        host, repo = DOCKER_HUB, rest
    if host == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if not repo or len(repo) > 255 or not all(_valid_component(c) for c in repo.split("/")):
        raise UsageError(f"{quote(text)}: {quote(repo)} is not a valid repository name "
                         "(lowercase letters, digits and . _ - separators)")
    if not tag and not digest:
        tag = "latest"
    return Reference("docker", host=host, repo=repo, tag=tag, digest=digest)


def _valid_component(comp: str) -> bool:
    """[a-z0-9]+ joined by `.`, `_`, `__` or runs of `-` (the distribution grammar)."""
    if not comp or not set(comp) <= _NAME_CHARS or not comp[0].isalnum() or not comp[-1].isalnum():
        return False
    return ".." not in comp and "._" not in comp and "_." not in comp and "___" not in comp \
        and "-." not in comp and ".-" not in comp and "_-" not in comp and "-_" not in comp
