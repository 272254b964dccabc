"""The one error of the image layer (exit 125: bad input, setup failed)."""
from __future__ import annotations

from nvlaunch.core.errors import NvlaunchError


class ImageError(NvlaunchError):
    """An image could not be fetched, verified, unpacked or found in the cache."""
