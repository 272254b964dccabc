"""What a front end asks for, in one record: `run` builds it from options, the hooks
from the container's environment.  Stdlib only."""
from __future__ import annotations

from nvlaunch.core.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


@record
class Request:
    gpus: str | None                 # NVIDIA_VISIBLE_DEVICES syntax; None/""/"void" = nothing
    capabilities: str | None = None  # NVIDIA_DRIVER_CAPABILITIES syntax; None = default
    env: tuple[tuple[str, str], ...] = ()  # the container's (key, value) pairs: NVIDIA_REQUIRE_*, ...

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Request:
        """The NVIDIA_* selection of a container's environment (hook, lxc-hook)."""
        return cls(gpus=env.get("NVIDIA_VISIBLE_DEVICES"),
                   capabilities=env.get("NVIDIA_DRIVER_CAPABILITIES"),
                   env=tuple((k, v) for k, v in env.items() if k.startswith("NVIDIA_")))

    @property
    def void(self) -> bool:
        return self.gpus is None or self.gpus.strip() in ("", "void")

    def getenv(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.env:
            if k == key:
                return v
        return default
