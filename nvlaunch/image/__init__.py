"""Images: references, transports, the cache, safe layer extraction, and how an image's
config applies to a container (docs/images.md).

Imported only when an image is named: never on `run`'s path for a plain directory.

    img = resolve("docker://127.0.0.1:5000/tools:1")    # pulled on demand, then cached
    img.rootfs                                          # a host directory
    argv, env, workdir, uid, gid = apply_config(img, argv, env_pairs, None, None, None, set())
"""
from __future__ import annotations

from nvlaunch.image.config import Image, ImageConfig, apply_config
from nvlaunch.image.reference import Reference, is_reference, parse

__all__ = ["Image", "ImageConfig", "Reference", "apply_config", "is_reference", "parse", "resolve"]


def resolve(ref: str) -> Image:
    """The cached image `ref` names (a reference string: see reference.parse), pulled
    first when the cache does not hold it.  NvlaunchError (exit 125) on any failure."""
    from nvlaunch.image.cache import Cache
    cache = Cache.default()
    return cache.lookup(parse(ref)) or cache.pull(parse(ref))
