"""Driver capabilities (NVIDIA_DRIVER_CAPABILITIES): what a set of them brings.

`parse_capabilities(text)` reads the variable or --capabilities; `files_for(driver, caps)`
picks the discovered driver files those capabilities get; `devices_for(caps)` is the one
table of device nodes (besides the GPUs' own) a container gets, used by the plan, by
`info` and by the CDI spec alike.
"""
from __future__ import annotations

from nvlaunch.core.errors import UsageError, quote
from nvlaunch.host.driver_files import (ALL_CAPABILITIES, ANY, CAPABILITIES, DEFAULT_CAPABILITIES, Driver,
                                        DriverFile)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection


# The device nodes a container gets besides its GPUs' own: (path, capabilities that bring
# it, None for every GPU container; whether a missing node is an error).  nvidiactl is
# the control node of every driver call; nvidia-uvm (and -tools, for profilers) comes
# with CUDA, which the video libraries use too (libnvidia-container mounts uvm for
# compute and video alike); nvidia-modeset with display.  Optional nodes may be absent:
# nvidia-uvm appears only once its module is loaded (the first CUDA call loads it).
DEVICES: tuple[tuple[str, frozenset[str] | None, bool], ...] = (
    ("/dev/nvidiactl", None, True),
    ("/dev/nvidia-uvm", frozenset({"compute", "video"}), False),
    ("/dev/nvidia-uvm-tools", frozenset({"compute", "video"}), False),
    ("/dev/nvidia-modeset", frozenset({"display"}), False),
)


def parse_capabilities(text: str | None) -> frozenset[str]:
    """NVIDIA_DRIVER_CAPABILITIES / --capabilities -> a set of capability names.

    A comma list (blanks and empty items ignored) of the CAPABILITIES names or "all";
    unset or empty gives the default compute,utility.  An unknown name is a UsageError.
    """
    if text is None:
        return DEFAULT_CAPABILITIES
    names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    if not names:
        return DEFAULT_CAPABILITIES
    out: set[str] = set()
    for name in names:
        if name == "all":
            out |= ALL_CAPABILITIES
        elif name in CAPABILITIES:
            out.add(name)
        else:
            raise UsageError(f"unknown driver capability {quote(name)} in {quote(text)}",
                             hint="want a comma list of " + ", ".join(CAPABILITIES) + ", or all")
    return frozenset(out)


def _expand(capabilities: Collection[str]) -> tuple[set[str], set[str]]:
    """(capabilities whose every file is wanted, capabilities whose libraries are wanted)."""
    caps = set(ALL_CAPABILITIES if "all" in capabilities else capabilities)
    unknown = caps - ALL_CAPABILITIES
    if unknown:
        raise UsageError(f"unknown driver capability {quote(sorted(unknown, key=str)[0])}",
                         hint="want " + ", ".join(CAPABILITIES) + ", or all")
    full: set[str] = set()
    todo = list(caps)
    while todo:
        cap = todo.pop()
        if cap not in full:
            full.add(cap)
            todo.extend(CAPABILITIES[cap].implies)
    libs = set(full)
    for cap in full:
        libs.update(CAPABILITIES[cap].implies_libs)
    return full, libs


def files_for(driver: Driver, capabilities: Collection[str]) -> tuple[DriverFile, ...]:
    """The files a container with these capabilities gets, in discovery order.

    video brings the compute libraries (not the MPS binaries), display all of graphics,
    compat32 the 32-bit copies of the libraries selected otherwise, "all" everything.
    GSP firmware comes with any set: libnvidia-container mounts it whatever the flags.
    """
    full, libs = _expand(capabilities)
    compat32 = "compat32" in full
    out = []
    for f in driver.files:
        if f.capability == ANY:
            out.append(f)
        elif f.kind == "lib":
            if f.capability in libs:
                out.append(f)
        elif f.kind == "lib32":
            if compat32 and f.capability in libs:
                out.append(f)
        elif f.capability in full:
            out.append(f)
    return tuple(out)


def devices_for(capabilities: Collection[str]) -> tuple[tuple[str, bool], ...]:
    """(device path, required) of every node of DEVICES these capabilities bring, in
    table order; GPU nodes come from the selection (plan.selection)."""
    full, _ = _expand(capabilities)
    return tuple((path, required) for path, caps, required in DEVICES
                 if caps is None or caps & full)
