"""Bad input, every command: one `nvlaunch: error:` line, the right exit code, nothing left.

Each row of CASES is one hostile or mistaken input to one command (its options, its
stdin, its environment, the files it reads), run as `python -m nvlaunch ...` against the
fake GPU host (tests/fakehost.py) with a fresh rootfs, a scratch directory (the working
directory, and where the row's files live) and an XDG_RUNTIME_DIR of its own (the plan
cache).  For every row:

- the exit status is the expected one (125: bad usage or input);
- stderr is exactly one line, valid UTF-8, printable (no raw control characters or
  escape sequences), starting `nvlaunch: error: `, naming the offending input (the
  row's `want` texts), with no traceback, no "internal error" and no Python object repr;
- stdout is empty;
- nothing is left behind: the scratch directory, the rootfs, the fake host tree and the
  cache directory are unchanged, and no mount appeared or went at the places ours would.

Placeholders in argv, environment values, stdin, file contents and `want`:
@R the rootfs, @S the scratch directory, @F a regular file there, @N a path there that
does not exist, @B the bundle directory @S/b, @H the fake host's root, @U0 GPU 0's UUID.
Arguments may be bytes that are not UTF-8: Python hands them to nvlaunch as
surrogate escapes, and the error line must show them escaped (\\xff), never crash.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import pytest

from tests.conftest import REPO, mounts_snapshot, needs_root, tree_snapshot
from tests.security.conftest import diff_state

pytestmark = [pytest.mark.slow, needs_root("the fake host's device nodes (mknod)")]

PREFIX = "nvlaunch: error: "
# A Python object's repr, or a record's (`Request(gpus=...)`), in a message.
OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>|\b[A-Z]\w*\([a-z_]+=")
FORBIDDEN = ("Traceback", "internal error", "Error:", "Exception")
HUGE = "9" * 5000                      # int() refuses more than 4300 digits


class Case(NamedTuple):
    id: str
    argv: tuple
    want: tuple = ()                   # texts the error line must hold (the offending input)
    env: dict | None = None            # changes to the environment (None value: unset)
    stdin: bytes | dict | list | None = None
    files: dict | None = None          # path under @S -> bytes, JSON data, or None (a directory)
    code: int = 125
    xfail: str | None = None


def C(id, *argv, want=(), env=None, stdin=None, files=None, code=125, xfail=None) -> Case:
    return Case(id, argv, (want,) if isinstance(want, (str, bytes)) else tuple(want), env, stdin,
                files, code, xfail)


def _bundle(env=None, root="@R", extra=None) -> dict:
    """A bundle's config.json: rootfs `root`, process.env `env`."""
    config = {"ociVersion": "1.0.2", "process": {"args": ["/bin/true"], "env": list(env or [])}}
    if root is not None:
        config["root"] = {"path": root}
    config.update(extra or {})
    return config


def _state(bundle="@B", **extra) -> dict:
    return {"ociVersion": "1.0.2", "id": "ctr1", "status": "creating", "pid": 1, "bundle": bundle,
            **extra}


GPU_ALL = "NVIDIA_VISIBLE_DEVICES=all"
LXC = {"LXC_HOOK_TYPE": "mount", "LXC_HOOK_SECTION": "lxc", "LXC_NAME": "c1"}
LXC_R = {**LXC, "LXC_ROOTFS_MOUNT": "@R"}

CASES = [
    # ---- the command line itself ------------------------------------------------------------
    C("no-command", want="no command"),
    C("unknown-command", "bogus", want="'bogus'"),
    C("unknown-global-option", "--bogus", "info", want="--bogus"),
    C("unknown-short-option", "-z", "info", want="-z"),
    C("global-option-without-value", "--driver-root", want="--driver-root"),
    C("driver-root-missing", "--driver-root", "@N", "info", want="@N"),
    C("driver-root-a-file", "--driver-root", "@F", "list", want=("--driver-root", "not a directory")),
    C("dev-root-missing", "--dev-root", "@N", "list", want="@N"),
    C("proc-root-empty", "--proc-root=", "info", want="--proc-root ''"),
    C("proc-root-missing-run", "--proc-root", "@N", "run", "--gpus", "0", "@R", "true", want="@N"),
    C("driver-root-not-utf8", b"--driver-root", b"@S/\xff\xfe", b"info", want=r"\xff\xfe"),
    C("debug-with-value", "--debug=1", "info", want="--debug"),
    C("help-with-value", "--help=x", want="--help"),
    C("version-with-value", "--version=2", want="--version"),
    C("command-not-utf8", b"\xff\xfe", want=r"\xff\xfe"),
    C("option-not-utf8", b"--\xff", b"info", want=r"--\xff"),
    C("command-with-escape-sequence", "\x1b[2J\x1b[31mred", want=r"\x1b[2J"),
    C("command-with-newline", "a\nb", want=r"a\nb"),
    C("command-with-line-separator", "a\u2028b\x85c\x0bd", want=r"a\u2028b"),

    # ---- run: arguments ---------------------------------------------------------------------
    C("run-nothing", "run", want="ROOTFS"),
    C("run-no-command", "run", "@R", want="CMD"),
    C("run-rootfs-missing", "run", "@N", "true", want="@N"),
    C("run-rootfs-a-file", "run", "@F", "true", want=("@F", "not a directory")),
    C("run-rootfs-not-utf8", b"run", b"@S/r\xff", b"true", want=r"\xff"),
    C("run-rootfs-empty", "run", "", "true", want="rootfs"),
    C("run-unknown-option", "run", "--frob", "@R", "true", want="--frob"),
    C("run-unknown-short-option", "run", "-x", "@R", "true", want="-x"),
    C("run-option-without-value", "run", "--gpus", want="--gpus"),
    C("run-uid-without-value", "run", "--uid", want="--uid"),
    C("run-flag-with-value", "run", "--readonly=yes", "@R", "true", want="--readonly"),
    C("run-no-gpu-with-value", "run", "--no-gpu=1", "@R", "true", want="--no-gpu"),
    # ---- run: ids
    C("run-uid-arabic-digits", "run", "--uid", "١٢", "@R", "true", want=("--uid", "١٢")),
    C("run-uid-superscript", "run", "--uid", "²", "@R", "true", want=("--uid", "²")),
    C("run-uid-fullwidth", "run", "--uid", "１", "@R", "true", want="--uid"),
    C("run-uid-negative", "run", "--uid", "-1", "@R", "true", want="--uid '-1'"),
    C("run-uid-huge", "run", "--uid", "99999999999999999999", "@R", "true", want="0..4294967294"),
    C("run-uid-minus-one-unsigned", "run", "--uid", "4294967295", "@R", "true", want="4294967295"),
    C("run-uid-5000-digits", "run", "--uid", HUGE, "@R", "true", want=("--uid", "5000 characters")),
    C("run-uid-empty", "run", "--uid", "", "@R", "true", want="--uid ''"),
    C("run-uid-blank", "run", "--uid", " 1", "@R", "true", want="--uid ' 1'"),
    C("run-uid-hex", "run", "--uid=0x10", "@R", "true", want="0x10"),
    C("run-uid-plus", "run", "--uid", "+1", "@R", "true", want="+1"),
    C("run-uid-not-utf8", b"run", b"--uid", b"1\xff", b"@R", b"true", want=r"1\xff"),
    C("run-gid-arabic-digit", "run", "--gid", "١", "@R", "true", want="--gid"),
    C("run-gid-exponent", "run", "--gid", "1e3", "@R", "true", want="1e3"),
    # ---- run: binds, env, workdir, net
    C("run-bind-no-colon", "run", "--bind", "x", "@R", "true", want="--bind 'x'"),
    C("run-bind-relative-dst", "run", "--bind", "/a:rel", "@R", "true", want="/a:rel"),
    C("run-bind-empty-src", "run", "--bind", ":/x", "@R", "true", want=":/x"),
    C("run-bind-bad-mode", "run", "--bind", "/a:/b:rx", "@R", "true", want="/a:/b:rx"),
    C("run-bind-too-many-fields", "run", "--bind", "/a:/b:ro:x", "@R", "true", want="/a:/b:ro:x"),
    C("run-bind-empty", "run", "--bind", "", "@R", "true", want="--bind"),
    C("run-bind-src-missing", "run", "--bind", "@N:/x", "@R", "true", want="@N"),
    C("run-bind-src-not-utf8", b"run", b"--bind", b"@S/\xff:/x", b"@R", b"true", want="/x"),
    C("run-bind-src-missing-with-gpu", "run", "--gpus", "0", "--bind", "@N:/x", "@R", "true",
      want="@N"),
    C("run-env-empty-key", "run", "--env", "=x", "@R", "true", want="=x"),
    C("run-env-empty", "run", "-e", "", "@R", "true", want="--env"),
    C("run-workdir-relative", "run", "--workdir", "rel", "@R", "true", want="rel"),
    C("run-workdir-empty", "run", "-w", "", "@R", "true", want="--workdir"),
    C("run-workdir-not-utf8", b"run", b"--workdir", b"\xffrel", b"@R", b"true", want=r"\xffrel"),
    C("run-net-bad", "run", "--net", "bridge", "@R", "true", want="bridge"),
    C("run-net-empty", "run", "--net", "", "@R", "true", want="--net"),
    # ---- run: GPU selection
    C("run-gpus-junk", "run", "--gpus", "junk", "@R", "true", want="'junk'"),
    C("run-gpus-index-out-of-range", "run", "--gpus", "7", "@R", "true", want=("'7'", "2 GPUs")),
    C("run-gpus-arabic-digit", "run", "--gpus", "١", "@R", "true", want="'١'"),
    C("run-gpus-superscript-mig", "run", "--gpus", "0:²", "@R", "true", want="'0:²'"),
    C("run-gpus-5000-digits", "run", "--gpus", HUGE, "@R", "true", want="5000 characters"),
    C("run-gpus-mig-5000-digits", "run", "--gpus", "0:" + HUGE, "@R", "true", want="MIG"),
    C("run-gpus-mig-old-form-huge", "run", "--gpus", f"MIG-@U0/{HUGE}/0", "@R", "true",
      want="MIG-GPU-"),
    C("run-gpus-mig-old-form-missing", "run", "--gpus", "MIG-@U0/1/0", "@R", "true",
      want=("MIG-@U0/1/0", "GPU instance 1")),
    C("run-gpus-all-and-index", "run", "--gpus", "all,0", "@R", "true", want="'all'"),
    C("run-gpus-none-and-void", "run", "--gpus", "none,void", "@R", "true", want="'none'"),
    C("run-gpus-not-utf8", b"run", b"--gpus", b"\xff\xfe", b"@R", b"true", want=r"'\xff\xfe'"),
    C("run-gpus-uuid-prefix-ambiguous", "run", "--gpus", "GPU-", "@R", "true", want="ambiguous"),
    C("run-gpus-uuid-unknown", "run", "--gpus", "GPU-zzzz", "@R", "true", want="'GPU-zzzz'"),
    C("run-gpus-bus-id-unknown", "run", "--gpus", "0000:99:00.0", "@R", "true", want="99:00.0"),
    C("run-gpus-escape-sequence", "run", "--gpus", "0,\x1b]0;pwned\x07", "@R", "true", want=r"\x1b]0;"),
    C("run-capabilities-junk", "run", "--gpus", "all", "--capabilities", "bogus", "@R", "true",
      want="'bogus'"),
    C("run-capabilities-not-utf8", b"run", b"--gpus", b"0", b"--capabilities", b"compute,,\xff",
      b"@R", b"true", want=r"'\xff'"),
    # ---- run: the image's NVIDIA_* variables
    C("run-env-visible-devices-junk", "run", "--env", "NVIDIA_VISIBLE_DEVICES=junk", "@R", "true",
      want="'junk'"),
    C("run-env-visible-devices-not-utf8", b"run", b"-e", b"NVIDIA_VISIBLE_DEVICES=0,\xff", b"@R",
      b"true", want=r"\xff"),
    C("run-env-capabilities-junk", "run", "-e", GPU_ALL, "-e", "NVIDIA_DRIVER_CAPABILITIES=x,y",
      "@R", "true", want="'x'"),
    C("run-env-require-junk", "run", "-e", GPU_ALL, "-e", "NVIDIA_REQUIRE_CUDA=junk", "@R", "true",
      want=("'junk'", "NVIDIA_REQUIRE_CUDA")),
    C("run-env-require-superscript", "run", "-e", GPU_ALL, "-e", "NVIDIA_REQUIRE_CUDA=cuda>=1.²",
      "@R", "true", want="'1.²'"),
    C("run-env-require-arabic-digits", "run", "-e", GPU_ALL, "-e", "NVIDIA_REQUIRE_ARCH=arch>=٩.٠",
      "@R", "true", want="NVIDIA_REQUIRE_ARCH"),
    C("run-env-require-unknown-name", "run", "-e", GPU_ALL, "-e", "NVIDIA_REQUIRE_X=foo>=1", "@R",
      "true", want="'foo'"),
    C("run-env-require-brand-order", "run", "-e", GPU_ALL, "-e", "NVIDIA_REQUIRE_X=brand>=tesla",
      "@R", "true", want="brand"),
    C("run-env-require-5000-digits", "run", "-e", GPU_ALL, "-e", f"NVIDIA_REQUIRE_D=driver>={HUGE}",
      "@R", "true", want="NVIDIA_REQUIRE_D"),
    C("run-env-require-unsatisfied", "run", "--gpus", "0", "-e", "NVIDIA_REQUIRE_D=driver>=9999",
      "@R", "true", want=("driver>=9999", "580.159.04")),
    C("run-env-require-not-utf8", b"run", b"-e", GPU_ALL.encode(), b"-e",
      b"NVIDIA_REQUIRE_CUDA=cuda>=\xff", b"@R", b"true", want=r"\xff"),

    # ---- hook: stage and options ------------------------------------------------------------
    C("hook-unknown-stage", "hook", "bogus-stage", stdin=_state(), want="'bogus-stage'"),
    C("hook-stage-not-utf8", b"hook", b"pre\xffstart", stdin=_state(), want=("stage", "start")),
    C("hook-extra-argument", "hook", "prestart", "extra", stdin=_state(), want="'extra'"),
    C("hook-unknown-option", "hook", "--frob", stdin=_state(), want="--frob"),
    C("hook-option-with-value", "hook", "--no-cgroups=1", stdin=_state(), want="--no-cgroups"),
    # ---- hook: the state JSON on stdin
    C("hook-no-state", "hook", stdin=b"", want="stdin"),
    C("hook-blank-state", "hook", stdin=b" \n\t ", want="stdin"),
    C("hook-state-malformed", "hook", stdin=b"{bad", want="stdin"),
    C("hook-state-truncated", "hook", stdin=b'{"bundle": "/x"', want="stdin"),
    C("hook-state-array", "hook", stdin=b"[1, 2]", want="not a JSON object"),
    C("hook-state-string", "hook", stdin=b'"state"', want="not a JSON object"),
    C("hook-state-null", "hook", stdin=b"null", want="not a JSON object"),
    C("hook-state-nan", "hook", stdin=b'{"bundle": "@B", "pid": NaN}', want="NaN"),
    C("hook-state-trailing-data", "hook", stdin=b'{"bundle": "@B"} {}', want="extra data"),
    C("hook-state-nul-bytes", "hook", stdin=b"\x00\x01\x02", want="stdin"),
    C("hook-state-bom", "hook", stdin=b"\xef\xbb\xbf{}", want="stdin"),
    C("hook-state-not-utf8", "hook", stdin=b'{"id": "\xff\xfe", "bundle": "@N\xff"}',
      want="config.json"),
    C("hook-state-deep-arrays", "hook", stdin=b"[" * 100000 + b"]" * 100000, want="stdin"),
    C("hook-state-deep-objects", "hook", stdin=b'{"a":' * 100000, want="stdin"),
    C("hook-state-5000-digit-pid", "hook", stdin=b'{"bundle": "@B", "pid": ' + HUGE.encode() + b"}",
      want="stdin"),
    C("hook-state-no-bundle", "hook", stdin={"id": "x", "pid": 1}, want="bundle"),
    C("hook-state-bundle-relative", "hook", stdin=_state("rel/bundle"), want="'rel/bundle'"),
    C("hook-state-bundle-not-string", "hook", stdin=_state(5), want="bundle"),
    C("hook-state-bundle-missing", "hook", stdin=_state("@N"), want="@N/config.json"),
    C("hook-state-id-escape-sequence", "hook", stdin=_state(id="a\x1b[31mX\x07"),
      files={"b/config.json": _bundle([GPU_ALL], root=None)}, want=r"a\x1b[31mX\x07"),
    C("hook-state-id-not-a-string", "hook", stdin=_state(id=["x", {"y": 1}]),
      files={"b/config.json": _bundle([GPU_ALL], root=None)}, want=("root.path", "container <list>")),
    C("hook-state-id-huge", "hook", stdin=_state(id="i" * 5000),
      files={"b/config.json": _bundle([GPU_ALL], root=None)}, want=("root.path", "'iii")),
    C("hook-state-pid-not-a-number", "hook", stdin=_state(pid="x"),
      files={"b/config.json": _bundle([GPU_ALL])}, want="pid"),
    C("hook-state-pid-bool", "hook", stdin=_state(pid=True),
      files={"b/config.json": _bundle([GPU_ALL])}, want="pid"),
    C("hook-state-root-missing", "hook", "create-container", stdin=_state(root="rel/rootfs"),
      files={"b/config.json": _bundle([GPU_ALL])}, want="rel/rootfs"),
    # ---- hook: the bundle's config.json
    C("hook-config-malformed", "hook", stdin=_state(), files={"b/config.json": b"{bad"},
      want="@B/config.json"),
    C("hook-config-not-object", "hook", stdin=_state(), files={"b/config.json": [1]},
      want=("@B/config.json", "not a JSON object")),
    C("hook-config-empty", "hook", stdin=_state(), files={"b/config.json": b""},
      want="@B/config.json"),
    C("hook-config-directory", "hook", stdin=_state(), files={"b/config.json": None},
      want="@B/config.json"),
    C("hook-config-not-utf8", "hook", stdin=_state(),
      files={"b/config.json": b'{"root": {"path": "r\xff"}, "process": {"env": ["A=\xfe"]}}'},
      want="@B/config.json"),
    C("hook-config-deep-nesting", "hook", stdin=_state(),
      files={"b/config.json": b"[" * 100000 + b"]" * 100000}, want="@B/config.json"),
    C("hook-config-no-root", "hook", stdin=_state(), files={"b/config.json": _bundle([GPU_ALL], None)},
      want=("@B/config.json", "root.path")),
    C("hook-config-root-not-object", "hook", stdin=_state(),
      files={"b/config.json": _bundle([GPU_ALL], None, {"root": "x"})}, want="root.path"),
    C("hook-config-root-path-missing", "hook", stdin=_state(),
      files={"b/config.json": _bundle([GPU_ALL], "missing-rootfs")}, want="@B/missing-rootfs"),
    C("hook-config-root-path-a-file", "hook", stdin=_state(),
      files={"b/config.json": _bundle([GPU_ALL], "@F")}, want="@F"),
    C("hook-config-visible-devices-junk", "hook", stdin=_state(),
      files={"b/config.json": _bundle(["NVIDIA_VISIBLE_DEVICES=junk"])}, want="'junk'"),
    C("hook-config-visible-devices-index", "hook", stdin=_state(),
      files={"b/config.json": _bundle(["NVIDIA_VISIBLE_DEVICES=5"])}, want="'5'"),
    C("hook-config-capabilities-junk", "hook", stdin=_state(),
      files={"b/config.json": _bundle([GPU_ALL, "NVIDIA_DRIVER_CAPABILITIES=compute,\x1b"])},
      want=r"'\x1b'"),
    C("hook-config-require-superscript", "hook", "create-runtime", stdin=_state(),
      files={"b/config.json": _bundle(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=²"])},
      want=("NVIDIA_REQUIRE_CUDA", "'²'")),
    C("hook-config-require-unsatisfied", "hook", stdin=_state(),
      files={"b/config.json": _bundle(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_DRIVER=driver<1"])},
      want="driver<1"),

    # ---- lxc-hook: its environment ----------------------------------------------------------
    C("lxc-hook-not-lxc", "lxc-hook", want="LXC_HOOK_TYPE"),
    C("lxc-hook-start-type", "lxc-hook", env={**LXC, "LXC_HOOK_TYPE": "start"}, want="start"),
    C("lxc-hook-net-section", "lxc-hook", env={**LXC, "LXC_HOOK_SECTION": "net"}, want="net"),
    C("lxc-hook-v0-start", "lxc-hook", "c1", "lxc", "start", want="start"),
    C("lxc-hook-type-escape-sequence", "lxc-hook", env={**LXC, "LXC_HOOK_TYPE": "\x1b[2J"},
      want=r"\x1b[2J"),
    C("lxc-hook-no-rootfs", "lxc-hook", env=LXC, want="LXC_ROOTFS_MOUNT"),
    C("lxc-hook-rootfs-relative", "lxc-hook", env={**LXC, "LXC_ROOTFS_MOUNT": "rel"}, want="'rel'"),
    C("lxc-hook-rootfs-a-file", "lxc-hook", env={**LXC, "LXC_ROOTFS_MOUNT": "@F"}, want="@F"),
    C("lxc-hook-rootfs-missing", "lxc-hook", env={**LXC, "LXC_ROOTFS_MOUNT": "@N"}, want="@N"),
    C("lxc-hook-rootfs-not-utf8", "lxc-hook", env={**LXC, "LXC_ROOTFS_MOUNT": b"@S/\xff"},
      want=r"\xff"),
    C("lxc-hook-visible-devices-junk", "lxc-hook",
      env={**LXC_R, "NVIDIA_VISIBLE_DEVICES": "junk"}, want="'junk'"),
    C("lxc-hook-visible-devices-not-utf8", "lxc-hook",
      env={**LXC_R, "NVIDIA_VISIBLE_DEVICES": b"\xff"}, want=r"'\xff'"),
    C("lxc-hook-capabilities-junk", "lxc-hook",
      env={**LXC_R, "NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "zz"}, want="'zz'"),
    C("lxc-hook-require-superscript", "lxc-hook",
      env={**LXC_R, "NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_REQUIRE_CUDA": "cuda>=²"}, want="'²'"),
    C("lxc-hook-require-bad-op", "lxc-hook",
      env={**LXC_R, "NVIDIA_VISIBLE_DEVICES": "0", "NVIDIA_REQUIRE_X": "driver=>1"}, want="driver=>1"),

    # ---- cdi --------------------------------------------------------------------------------
    C("cdi-nothing", "cdi", want="subcommand"),
    C("cdi-unknown-subcommand", "cdi", "bogus", want="'bogus'"),
    C("cdi-unknown-option", "cdi", "generate", "--frob", want="--frob"),
    C("cdi-option-without-value", "cdi", "generate", "--output", want="--output"),
    C("cdi-extra-argument", "cdi", "generate", "extra", want="'extra'"),
    C("cdi-format-bad", "cdi", "generate", "--format", "xml", want="--format xml"),
    C("cdi-format-empty", "cdi", "generate", "--format=", want="--format :"),
    C("cdi-list-format-bad", "cdi", "list", "--format", "toml", want="--format toml"),
    C("cdi-output-in-missing-dir", "cdi", "generate", "--output", "@S/nodir/spec.json",
      want="@S/nodir/spec.json"),
    C("cdi-output-a-directory", "cdi", "generate", "--output", "@S", want="'@S'"),
    C("cdi-output-trailing-slash", "cdi", "generate", "-o", "@S/x/", want="'@S/x/'"),
    C("cdi-output-empty", "cdi", "generate", "--output", "", want="--output ''"),
    C("cdi-output-under-a-file", "cdi", "generate", "--output", "@F/spec.yaml", want="@F/spec.yaml"),
    C("cdi-version-too-old", "cdi", "generate", "--cdi-version", "0.1.0", want="0.1.0"),
    C("cdi-version-junk", "cdi", "generate", "--cdi-version", "junk", want="--cdi-version junk"),
    C("cdi-version-arabic-digits", "cdi", "generate", "--cdi-version", "٠.٥.٠", want="--cdi-version ٠.٥.٠"),
    C("cdi-version-unknown", "cdi", "generate", "--cdi-version", "0.9.0", want="0.9.0"),
    C("cdi-version-5000-digits", "cdi", "generate", "--cdi-version", f"0.{HUGE}.0", want="--cdi-version"),
    C("cdi-capabilities-junk", "cdi", "generate", "--capabilities", "junk", want="'junk'"),
    C("cdi-hook-path-relative", "cdi", "generate", "--hook-path", "rel/nvlaunch", want="rel/nvlaunch"),
    C("cdi-hook-path-empty", "cdi", "generate", "--hook-path=", want="--hook-path ''"),

    # ---- list, info, features ---------------------------------------------------------------
    C("list-gpus-junk", "list", "--gpus", "junk", want="'junk'"),
    C("list-gpus-out-of-range", "list", "--gpus", "9", want="'9'"),
    C("list-gpus-mig-arabic-digit", "list", "--gpus", "0:٣", want="'0:٣'"),
    C("list-gpus-mig-missing", "list", "--gpus", "0:0", want="'0:0'"),
    C("list-gpus-mig-uuid-unknown", "list", "--gpus", "MIG-abc", want="'MIG-abc'"),
    C("list-gpus-bus-id-bad-function", "list", "--gpus", "0000:06:00.9", want="0000:06:00.9"),
    C("list-gpus-not-utf8", b"list", b"--gpus", b"0,\xff", want=r"'\xff'"),
    C("list-gpus-empty-item-and-none", "list", "--gpus", ",none,0,", want="'none'"),
    C("list-capabilities-junk", "list", "--capabilities", "junk", want="'junk'"),
    C("list-capabilities-empty-items", "list", "--capabilities", "compute,,bad", want="'bad'"),
    C("list-capabilities-case", "list", "--capabilities", "COMPUTE", want="'COMPUTE'"),
    C("list-extra-argument", "list", "extra", want="'extra'"),
    C("list-flag-with-value", "list", "--json=1", want="--json"),
    C("info-unknown-option", "info", "--gpus", "0", want="--gpus"),
    C("info-extra-argument", "info", "extra", want="'extra'"),
    C("features-unknown-option", "features", "--x", want="--x"),

    # ---- setup ------------------------------------------------------------------------------
    C("setup-nothing", "setup", want="system"),
    C("setup-unknown-system", "setup", "bogus", want="'bogus'"),
    C("setup-system-not-utf8", b"setup", b"dock\xffer", want=r"dock\xffer"),
    C("setup-unknown-option", "setup", "docker", "--frob", want="--frob"),
    C("setup-option-without-value", "setup", "docker", "--config", want="--config"),
    C("setup-flag-with-value", "setup", "docker", "--dry-run=no", want="--dry-run"),
    C("setup-extra-argument", "setup", "podman", "extra", want="'extra'"),
    C("setup-docker-config-not-object", "setup", "docker", "--config", "@S/d.json", "--hook-path",
      "/usr/bin/nvlaunch", files={"d.json": [1]}, want=("@S/d.json", "not a JSON object")),
    C("setup-docker-runtimes-not-object", "setup", "docker", "--config", "@S/d.json", "--hook-path",
      "/usr/bin/nvlaunch", files={"d.json": {"runtimes": 5}}, want="runtimes"),
    C("setup-docker-config-malformed", "setup", "docker", "--config", "@S/d.json", "--hook-path",
      "/usr/bin/nvlaunch", files={"d.json": b'{"a": }'}, want="@S/d.json"),
    C("setup-docker-config-not-utf8", "setup", "docker", "--config", "@S/d.json", "--hook-path",
      "/usr/bin/nvlaunch", files={"d.json": b'{"a": "\xff"}'}, want="@S/d.json"),
    C("setup-docker-config-a-directory", "setup", "docker", "--config", "@S", "--hook-path",
      "/usr/bin/nvlaunch", want="@S"),
    C("setup-docker-config-trailing-slash", "setup", "docker", "--config", "@S/new/sub/",
      "--hook-path", "/usr/bin/nvlaunch", want="@S/new/sub/"),
    C("setup-docker-config-under-a-file", "setup", "docker", "--config", "@F/daemon.json",
      "--hook-path", "/usr/bin/nvlaunch", want="@F"),
    C("setup-docker-hook-path-empty", "setup", "docker", "--config", "@S/d.json", "--hook-path", "",
      want="--hook-path ''"),
    C("setup-docker-hook-path-relative", "setup", "docker", "--config", "@S/d.json", "--hook-path",
      "bin/nvlaunch", want="bin/nvlaunch"),
    C("setup-runc-config-malformed", "setup", "runc", "--config", "@S/config.json",
      files={"config.json": b"{bad"}, want="@S/config.json"),
    C("setup-runc-config-missing", "setup", "runc", "--config", "@N", want="@N"),
    C("setup-podman-config-trailing-slash", "setup", "podman", "--config", "@S/a/b/", "--hook-path",
      "/usr/bin/nvlaunch", want="@S/a/b/"),
    C("setup-crio-config-in-missing-dir-under-file", "setup", "crio", "--config", "@F/x/hooks.json",
      "--hook-path", "/usr/bin/nvlaunch", want="@F"),
    C("setup-podman-cdi-format-bad", "setup", "podman", "--cdi", "--format", "xml", "--output",
      "@S/spec.json", want="--format xml"),
    C("setup-podman-cdi-output-trailing-slash", "setup", "podman", "--cdi", "--output", "@S/q/",
      "--hook-path", "/usr/bin/nvlaunch", want="@S/q/"),
    C("setup-podman-cdi-version-junk", "setup", "podman", "--cdi", "--cdi-version", "x.y.z",
      "--output", "@S/spec.json", want="x.y.z"),
    C("setup-containerd-config-not-utf8", "setup", "containerd", "--config", "@S/c.toml",
      "--wrapper", "@S/w", "--hook-path", "/usr/bin/nvlaunch", files={"c.toml": b"x = \xff\n"},
      want=("@S/c.toml", "UTF-8")),
    C("setup-containerd-config-a-directory", "setup", "containerd", "--config", "@S", "--wrapper",
      "@S/w", "--hook-path", "/usr/bin/nvlaunch", want="@S"),
    C("setup-lxc-no-name", "setup", "lxc", want="NAME"),
    C("setup-lxc-two-names", "setup", "lxc", "a", "b", want="'a b'"),
    C("setup-lxc-unknown-option", "setup", "lxc", "--frob", want="--frob"),
    C("setup-lxc-config-missing", "setup", "lxc", "--config", "@N", want="@N"),
    C("setup-lxc-config-not-utf8", "setup", "lxc", "--config", "@S/lxc.conf",
      files={"lxc.conf": b"lxc.x = \xff\n"}, want=("@S/lxc.conf", "UTF-8")),
    C("setup-lxc-config-a-directory", "setup", "lxc", "--config", "@S", "--dry-run", want="@S"),
    C("setup-lxc-gpus-junk", "setup", "lxc", "--config", "@S/lxc.conf", "--gpus", "junk",
      files={"lxc.conf": b"lxc.uts.name = c1\n"}, want="'junk'"),
    C("setup-lxc-capabilities-junk", "setup", "lxc", "--config", "@S/lxc.conf", "--capabilities",
      "all,x", files={"lxc.conf": b"lxc.uts.name = c1\n"}, want="'x'"),
    C("setup-lxc-hook-path-empty", "setup", "lxc", "--config", "@S/lxc.conf", "--hook-path=",
      files={"lxc.conf": b"lxc.uts.name = c1\n"}, want="--hook-path ''"),

    # ---- the other hooks and the runtime shim -----------------------------------------------
    C("ldcache-no-state", "ldcache", want="stdin"),
    C("ldcache-link-malformed", "ldcache", "--link", "bad", stdin=_state(), want="'bad'"),
    C("ldcache-folder-relative", "ldcache", "--folder", "rel", stdin=_state(root="@R"), want="'rel'"),
    C("ldcache-extra-argument", "ldcache", "extra", want="'extra'"),
    C("runtime-bundle-config-malformed", "runtime", "create", "--bundle", "@B", "ctr1",
      env={"NVLAUNCH_RUNTIME": "/bin/true"}, files={"b/config.json": b"{bad"},
      want="@B/config.json"),
    C("runtime-bundle-config-not-utf8", "runtime", "create", "--bundle", "@B", "ctr1",
      env={"NVLAUNCH_RUNTIME": "/bin/true"}, files={"b/config.json": b'{"x": "\xff"}'},
      want="@B/config.json"),
    C("runtime-bundle-missing", "runtime", "run", "-b", "@N", "ctr1",
      env={"NVLAUNCH_RUNTIME": "/bin/true"}, want="@N/config.json"),
]


# ---- the harness ----------------------------------------------------------------------------

class Paths(NamedTuple):
    rootfs: str
    scratch: str
    xdg: str
    host: str
    uuid0: str

    def subst(self, value):
        """A row's value with the placeholders filled in (str and bytes alike)."""
        table = [("@R", self.rootfs), ("@S", self.scratch), ("@F", os.path.join(self.scratch, "afile")),
                 ("@N", os.path.join(self.scratch, "missing")), ("@B", os.path.join(self.scratch, "b")),
                 ("@H", self.host), ("@U0", self.uuid0)]
        if isinstance(value, bytes):
            for k, v in table:
                value = value.replace(k.encode(), v.encode())
            return value
        if isinstance(value, str):
            for k, v in table:
                value = value.replace(k, v)
            return value
        if isinstance(value, (dict, list)):
            return self.subst(json.dumps(value).encode())
        return value


@pytest.fixture
def paths(fake, rootfs, hostdir):
    xdg = tempfile.mkdtemp(prefix="nvl-xdg-")
    with open(os.path.join(hostdir, "afile"), "w") as f:
        f.write("not a directory\n")
    yield Paths(rootfs, hostdir, xdg, fake.root, fake.gpus[0].uuid)
    shutil.rmtree(xdg, ignore_errors=True)


# Mount points a leak would show at: these, and anything under one of the row's directories.
_WATCHED = ("/", "/tmp", "/run", "/mnt", "/proc", "/sys", "/dev")


def _snapshot(p: Paths) -> dict:
    dirs = (p.scratch, os.path.dirname(p.rootfs), p.host)
    mine = dirs + (p.xdg,)
    mounts = [m for m in mounts_snapshot()
              if (mp := m.split(" ", 1)[0]) in _WATCHED or any(mp == d or mp.startswith(d + "/")
                                                               for d in mine)]
    trees = {d: tree_snapshot(d) for d in dirs}
    # The plan cache: no file may stay (its directory, made on the way, may).
    trees[p.xdg] = {k: v for k, v in tree_snapshot(p.xdg).items() if not os.path.isdir(
        os.path.join(p.xdg, k))}
    return {"mounts": mounts, "trees": trees}


def _make_files(p: Paths, files: dict | None) -> None:
    for rel, content in (files or {}).items():
        path = os.path.join(p.scratch, rel)
        if content is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(p.subst(content))


def _environ(p: Paths, fake, extra: dict | None) -> dict:
    env: dict = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": REPO,
                 "XDG_RUNTIME_DIR": p.xdg, **fake.env()}
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = p.subst(v)
    return env


def check_error_line(stderr: bytes, want=()) -> str:
    """The one-line contract for a failure's stderr; returns the line."""
    try:
        text = stderr.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AssertionError(f"stderr is not UTF-8: {stderr[:300]!r}") from err
    assert text.startswith(PREFIX), f"no `{PREFIX}` line: {text[:2000]!r}"
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text[:2000]!r}"
    line = text[:-1]
    assert len(text.splitlines()) == 1 and line.isprintable(), f"unprintable characters: {line[:2000]!r}"
    for bad in FORBIDDEN:
        assert bad not in line, f"{bad!r} in the error line: {line[:2000]!r}"
    assert not OBJECT_REPR.search(line), f"a Python repr in the error line: {line[:2000]!r}"
    assert len(line) < 20000, f"error line of {len(line)} characters"
    for w in want:
        w = w.decode("utf-8", "surrogateescape") if isinstance(w, bytes) else w
        assert w in line, f"{w!r} not in the error line: {line[:2000]!r}"
    return line


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(
    reason=c.xfail, strict=True)] if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, paths: Paths, fake):
    _make_files(paths, case.files)
    argv = [os.fsencode(paths.subst(a)) for a in case.argv]
    stdin = b"" if case.stdin is None else paths.subst(case.stdin)
    env = _environ(paths, fake, case.env)
    before = _snapshot(paths)
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"nvlaunch", *argv], input=stdin,
                          capture_output=True, env=env, cwd=paths.scratch, timeout=120)
    after = _snapshot(paths)
    shown = f"argv={case.argv!r:.300} -> {proc.returncode}\nstderr: {proc.stderr[:3000]!r}"
    assert proc.returncode == case.code, shown
    check_error_line(proc.stderr, [paths.subst(w) for w in case.want])
    assert proc.stdout == b"", f"stdout: {proc.stdout[:2000]!r}\n{shown}"
    assert after == before, "left behind: " + "; ".join(diff_state(before, after))


def test_the_table_is_big_and_distinct():
    """The suite's own promise: at least 100 bad inputs, each with its own name, each
    saying what the error line must name."""
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.want for c in CASES)
    commands = {next((a for a in c.argv if isinstance(a, str) and not a.startswith("-")), None)
                for c in CASES}
    assert {"run", "hook", "lxc-hook", "cdi", "list", "info", "features", "setup", "ldcache",
            "runtime"} <= commands


def test_a_good_input_passes_the_same_checks(paths, fake):
    """The harness can tell: the same run with a good option succeeds, leaves nothing, and
    the error-line checks refuse what the contract forbids."""
    before = _snapshot(paths)
    proc = subprocess.run([sys.executable, "-m", "nvlaunch", "list", "--gpus", "0"], capture_output=True,
                          env=_environ(paths, fake, None), cwd=paths.scratch, timeout=120)
    assert proc.returncode == 0 and proc.stderr == b"" and b"/dev/nvidia" in proc.stdout, proc.stderr
    assert _snapshot(paths) == before
    for bad in (b"", b"nvlaunch: error: a\nb\n", b"nvlaunch: error: x", b"Traceback\n",
                b"nvlaunch: error: internal error: ValueError: x\n", b"nvlaunch: error: \x1b[1m\n",
                b"nvlaunch: error: <nvlaunch.x.Y object at 0x7f00>\n", b"nvlaunch: error: \xff\n",
                b"nvlaunch: error: Request(gpus='0')\n"):
        with pytest.raises(AssertionError):
            check_error_line(bad)
    with pytest.raises(AssertionError):
        check_error_line(b"nvlaunch: error: unknown device 'x'\n", ["'y'"])
