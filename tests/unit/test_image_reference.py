"""Image references in skopeo/podman transport syntax (nvlaunch.image.reference)."""
from __future__ import annotations

import os

import pytest

from nvlaunch.core.errors import UsageError
from nvlaunch.image.reference import is_reference, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, transport, fields, name", [
    ("oci:/srv/layout", "oci", {"path": "/srv/layout", "tag": ""}, "oci:/srv/layout"),
    ("oci:/srv/layout:v1", "oci", {"path": "/srv/layout", "tag": "v1"}, "oci:/srv/layout:v1"),
    ("oci-archive:/a/img.tar:latest", "oci-archive", {"path": "/a/img.tar", "tag": "latest"},
     "oci-archive:/a/img.tar:latest"),
    ("docker-archive:/a/s.tar", "docker-archive", {"path": "/a/s.tar"}, "docker-archive:/a/s.tar"),
    ("docker-archive:/a/s.tar:@1", "docker-archive", {"index": 1}, "docker-archive:/a/s.tar:@1"),
    ("docker-archive:/a/s.tar:busybox", "docker-archive",
     {"repo": "docker.io/library/busybox", "tag": "latest"},
     "docker-archive:/a/s.tar:docker.io/library/busybox:latest"),
    ("docker://127.0.0.1:5000/tools/cuda:12.4", "docker",
     {"host": "127.0.0.1:5000", "repo": "tools/cuda", "tag": "12.4"},
     "docker://127.0.0.1:5000/tools/cuda:12.4"),
    ("docker://localhost/x", "docker", {"host": "localhost", "repo": "x", "tag": "latest"},
     "docker://localhost/x:latest"),
    ("docker://ubuntu", "docker", {"host": "docker.io", "repo": "library/ubuntu", "tag": "latest"},
     "docker://docker.io/library/ubuntu:latest"),
    ("docker://nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04", "docker",
     {"host": "nvcr.io", "repo": "nvidia/cuda", "tag": "12.4.1-base-ubuntu22.04"}, None),
    (f"docker://127.0.0.1:5000/a/b@{DIGEST}", "docker", {"digest": DIGEST, "tag": ""},
     f"docker://127.0.0.1:5000/a/b@{DIGEST}"),
    (f"docker://[::1]:5000/a/b:t@{DIGEST}", "docker", {"host": "[::1]:5000", "digest": DIGEST}, None),
])
def test_parse(text, transport, fields, name):
    ref = parse(text)
    assert ref.transport == transport
    for key, want in fields.items():
        assert getattr(ref, key) == want, key
    if name:
        assert ref.name == name
    assert parse(ref.name).name == ref.name       # canonical names parse to themselves
    assert is_reference(text)


def test_relative_paths_become_absolute():
    assert parse("oci:layout:v1").path == os.path.join(os.getcwd(), "layout")


@pytest.mark.parametrize("text", [
    "", "/srv/rootfs", "rootfs", "dir:/x", "docker:x", "docker:///x", "oci:", "oci::tag",
    "docker://127.0.0.1:5000/UPPER:1", "docker://127.0.0.1:5000/a//b", "docker://h.io/a_-b",
    "docker://127.0.0.1:5000/a:-bad", "docker://127.0.0.1:5000/a@sha256:abc",
    "docker://127.0.0.1:5000/a@md5:" + "0" * 32, "docker://127.0.0.1:5000/", "oci:/x:bad tag",
    "docker-archive:/x:@x", "docker://h.io/a:" + "t" * 200,
])
def test_bad_references_are_one_usage_error(text):
    with pytest.raises(UsageError) as err:
        parse(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["/srv/rootfs", "./oci", "rootfs:x", "ocix:/a", "docker:/x"])
def test_directories_are_not_references(text):
    assert not is_reference(text)
