"""`nvlaunch setup containerd`: runtime "nvlaunch" registered in /etc/containerd/config.toml.

A marked block appended (or replaced in place) registers io.containerd.runc.v2 with
BinaryName = a two-line wrapper /usr/local/bin/nvlaunch-runtime running
`nvlaunch runtime "$@"`, since the runc shim passes no extra arguments.  Plain text, no
TOML library: the block is nvlaunch's, the rest of the file is left as it is.
"""
from __future__ import annotations

import json
import re
import shlex

from nvlaunch.core import errors as E
from nvlaunch.setup.common import RUNTIME_NAME, Writer, executable, hook, read_text

DEFAULT_CONFIG = "/etc/containerd/config.toml"
DEFAULT_WRAPPER = "/usr/local/bin/nvlaunch-runtime"
MARK_BEGIN = "# BEGIN nvlaunch (written by `nvlaunch setup containerd`; edit with care)"
MARK_END = "# END nvlaunch"
# The runtimes table of each config.toml version.
RUNTIME_TABLES = {1: 'plugins.cri.containerd.runtimes',
                  2: 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes',
                  3: 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'}


def _toml_version(text: str) -> int:
    m = re.search(r"(?m)^\s*version\s*=\s*(\S*)", text)
    if not m:
        return 1
    raw = m.group(1)
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3:
        raise E.UsageError(f"containerd config: version = {E.quote(raw)} is not a config version")
    return int(raw)


def containerd_block(version: int, name: str, wrapper: str) -> str:
    """The marked TOML block registering runtime `name` for config `version`."""
    table = RUNTIME_TABLES.get(version)
    if table is None:
        raise E.UsageError(f"containerd config version {version} is not one nvlaunch knows (1-3)")
    key = f'{table}.{_toml_key(name)}'
    return (f"{MARK_BEGIN}\n"
            f"[{key}]\n"
            f'  runtime_type = "io.containerd.runc.v2"\n'
            f"[{key}.options]\n"
            f"  BinaryName = {json.dumps(wrapper)}\n"
            f"{MARK_END}\n")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def containerd_merge(text: str, name: str, wrapper: str) -> str:
    """`text` with the nvlaunch block added, or replaced where the markers already are."""
    new_file = not text.strip()
    version = 2 if new_file else _toml_version(text)
    block = containerd_block(version, name, wrapper)
    begin, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if begin != -1 and end != -1 and end > begin:
        end_line = text.find("\n", end)
        end_line = len(text) if end_line == -1 else end_line + 1
        return text[:begin] + block + text[end_line:]
    header = block.splitlines()[1]
    if header in text:
        raise E.UsageError(f"containerd config already defines {header} outside nvlaunch's "
                           "block; not touching it")
    if new_file:
        return "version = 2\n\n" + block
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + block


def wrapper_script(path: str, args: list | None = None) -> str:
    words = " ".join(shlex.quote(w) for w in [path] + list(args or []))
    return f'#!/bin/sh\nexec {words} runtime "$@"\n'


def setup_containerd(gopts: dict, opts: dict, w: Writer) -> int:
    dest = opts.get("config") or DEFAULT_CONFIG
    name = opts.get("runtime_name") or RUNTIME_NAME
    wrapper = opts.get("wrapper") or DEFAULT_WRAPPER
    text = read_text(dest) or ""
    merged = containerd_merge(text, name, wrapper)
    w.write(wrapper, wrapper_script(*executable(hook(gopts, opts), "setup containerd")), 0o755,
            backup=False)
    w.write(dest, merged)
    if not w.dry_run:
        w.out.write(f"restart containerd; with Kubernetes add a RuntimeClass with handler {name}\n")
    return 0
