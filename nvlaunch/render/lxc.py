"""nvlaunch's block in an LXC container config: the mount hook, the selection variables
and the device rules (cgroup v1 and v2) for the nodes the hook will bind."""
from __future__ import annotations

from nvlaunch.core.errors import NvlaunchError, UsageError
from nvlaunch.plan.devices import rules_for_nodes
from nvlaunch.plan.records import Plan


BLOCK_BEGIN = "# >>> nvlaunch: GPU access (written by `nvlaunch setup lxc`; replaced on each run) >>>"


BLOCK_END = "# <<< nvlaunch <<<"


DEFAULT_GPUS = "all"


DEFAULT_CAPABILITIES = "compute,utility"


def has_other_hooks(text: str) -> bool:
    for line in strip_block(text).splitlines():
        key = line.split("=", 1)[0].strip()
        if key.startswith("lxc.hook.") and key != "lxc.hook.version":
            return True
    return False


def config_block(plan: Plan, hook_line: str, gpus: str = DEFAULT_GPUS,
                 capabilities: str = DEFAULT_CAPABILITIES, hook_version: int = 1) -> str:
    """nvlaunch's marked block for an LXC config: `hook_line` as lxc.hook.mount, the
    selection as lxc.environment, and an allow rule per device node of `plan`."""
    for name, value in (("--gpus", gpus), ("--capabilities", capabilities)):
        if "\n" in value or "=" in value:
            raise UsageError(f"{name} {value!r}: not a valid value")
    lines = [BLOCK_BEGIN]
    if hook_version == 1:
        lines.append("lxc.hook.version = 1")
    lines += [f"lxc.hook.mount = {hook_line}",
              f"lxc.environment = NVIDIA_VISIBLE_DEVICES={gpus}",
              f"lxc.environment = NVIDIA_DRIVER_CAPABILITIES={capabilities}"]
    for rule in rules_for_nodes(plan.devices):
        lines.append(f"lxc.cgroup.devices.allow = {rule.to_v1_line()}")
        lines.append(f"lxc.cgroup2.devices.allow = {rule.to_v1_line()}")
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def strip_block(text: str) -> str:
    """`text` without nvlaunch's block (all copies of it)."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BLOCK_BEGIN:
            inside = True
            continue
        if inside:
            if line.rstrip("\n") == BLOCK_END:
                inside = False
            continue
        out.append(line)
    if inside:
        raise NvlaunchError(f"unterminated nvlaunch block in the config (no {BLOCK_END!r} line)")
    return "".join(out)


def updated_config(text: str, block: str) -> str:
    """The config with nvlaunch's block replaced in place, or appended if absent."""
    if BLOCK_BEGIN + "\n" not in text and not text.endswith(BLOCK_BEGIN):
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    strip_block(text)       # checks the block is terminated
    out, inside, done = [], False, False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BLOCK_BEGIN:
            inside = True
            if not done:
                out.append(block)
                done = True
            continue
        if inside:
            inside = line.rstrip("\n") != BLOCK_END
            continue
        out.append(line)
    return "".join(out)
