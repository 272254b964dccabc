"""Device cgroup rules: one record, rendered as cgroup-v1 text here and as eBPF in bpf.py.

A DeviceRule says "type major:minor access" like a line of the v1 `devices.allow` file
(Documentation/admin-guide/cgroup-v1/devices.rst): type 'c' (char), 'b' (block) or 'a'
(all), major/minor None for "*", access a subset of "rwm" (read, write, mknod).
NVIDIA's toolkit grants its device nodes "rw" without "m" (libnvidia-container
src/cgroup.c), and so does rules_for_nodes(): the container may open the nodes it is
given but not create new ones.

Pure: stdlib and consts only, so the rules can be built and tested without a kernel.
"""
from __future__ import annotations


from nvlaunch.core.records import record

from nvlaunch.core.consts import (
    BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE,
    BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from collections.abc import Container
    from typing import Protocol

    class HasDevice(Protocol):
        """A device node: a BindDevice, or anything else with its numbers."""
        @property
        def major(self) -> int: ...
        @property
        def minor(self) -> int: ...

# The v1 type letter -> the bpf_cgroup_dev_ctx type value (include/uapi/linux/bpf.h).
# 'a' (all types) has no value: a rule of type 'a' skips the type compare.
DEV_TYPES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK}

# The v1 access letter -> the bpf_cgroup_dev_ctx access bit; the order is the one the
# kernel prints in devices.list ("rwm").
ACCESS_BITS = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
ALL_ACCESS = "rwm"


def access_mask(access: str) -> int:
    """"rw" -> BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE."""
    mask = 0
    for ch in access:
        mask |= ACCESS_BITS[ch]
    return mask


def normalize_access(access: Container[str]) -> str:
    """Letters in the kernel's order, each once: "wr" -> "rw"."""
    return "".join(ch for ch in ALL_ACCESS if ch in access)


@record
class DeviceRule:
    """One device cgroup rule; `allow=False` makes it a deny rule."""
    type: str
    major: int | None
    minor: int | None
    access: str
    allow: bool = True

    def __post_init__(self) -> None:
        if self.type not in ("c", "b", "a"):
            raise ValueError(f"device rule type {self.type!r}: want 'c', 'b' or 'a'")
        if not self.access or set(self.access) - set(ALL_ACCESS):
            raise ValueError(f"device rule access {self.access!r}: want a subset of 'rwm'")
        for name in ("major", "minor"):
            val = getattr(self, name)
            # The kernel's dev_t has a 12-bit major and a 20-bit minor (MINORBITS in
            # include/linux/kdev_t.h); anything above cannot name a device.
            limit = (1 << 12) if name == "major" else (1 << 20)
            if val is not None and not (0 <= val < limit):
                raise ValueError(f"device rule {name} {val}: out of range 0..{limit - 1}")

    def to_v1_line(self) -> str:
        """The line for devices.allow / devices.deny: "c 195:0 rw" ("*" for any)."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {normalize_access(self.access)}"

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        """(type, major, minor): what the v1 kernel merges exceptions by
        (dev_exception_add() in security/device_cgroup.c)."""
        return (self.type, self.major, self.minor)


def rules_for_nodes(nodes: Iterable[HasDevice]) -> tuple[DeviceRule, ...]:
    """Allow "rw" on each char device node (objects with `.major` and `.minor`), once each,
    in the order given."""
    seen: set[tuple[int, int]] = set()
    out = []
    for node in nodes:
        key = (int(node.major), int(node.minor))
        if key in seen:
            continue
        seen.add(key)
        out.append(DeviceRule("c", key[0], key[1], "rw"))
    return tuple(out)


def parse_v1_line(line: str) -> DeviceRule:
    """"c 195:0 rw" (a devices.list line) -> DeviceRule; "a" alone means "a *:* rwm"."""
    parts = line.split()
    if parts == ["a"]:
        return DeviceRule("a", None, None, ALL_ACCESS)
    if len(parts) != 3 or ":" not in parts[1]:
        raise ValueError(f"malformed device rule line {line!r}")
    major, _, minor = parts[1].partition(":")
    return DeviceRule(parts[0], None if major == "*" else int(major),
                      None if minor == "*" else int(minor), parts[2])
