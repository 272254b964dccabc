"""Command-line options from a table per command: the one parser every subcommand uses.

argparse costs more to import than a whole `run` takes to set up a container, so each
command declares `{option: (key, takes a value, repeatable)}` and parse_command() applies
the conventions they all share: `--opt=value` or `--opt value`, `--` ends options,
`--help` prints the command's usage, an unknown option or extra argument is one
UsageError naming it.  Stdlib only.
"""
from __future__ import annotations

import sys

from nvlaunch.core.errors import UsageError, quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    # option -> (key in the parsed options, takes a value, repeatable)
    OptionTable = dict[str, tuple[str, bool, bool]]

HELP = {"--help": ("help", False, False), "-h": ("help", False, False)}


def parse_opts(args: list[str], table: OptionTable, command: str,
               stop_at_positional: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Options from `table` until the first positional (or `--`); returns (opts, rest)."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                break
            opts.setdefault("_positional", []).append(arg)
            i += 1
            continue
        value: str | bool
        name, eq, value = arg.partition("=")
        if name not in table:
            raise UsageError(f"{_where(command)}unknown option {name}")
        key, takes_value, repeat = table[name]
        if takes_value:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{_where(command)}option {name} needs a value")
                value = args[i]
        elif eq:
            raise UsageError(f"{_where(command)}option {name} takes no value")
        else:
            value = True
        if repeat:
            opts.setdefault(key, []).append(value)
        else:
            opts[key] = value
        i += 1
    return opts, args[i:]


def _where(command: str) -> str:
    """The command an error names ("" for nvlaunch's own options: the line says nvlaunch)."""
    return f"{command}: " if command else ""


def parse_command(args: list[str], table: OptionTable, command: str, usage: str | None = None,
                  max_positional: int = 0) -> tuple[dict[str, Any], list[str]] | None:
    """parse_opts plus the conventions every subcommand shares: `--help` (when the table
    has it) prints `usage` and gives None; more than `max_positional` arguments left over
    is an error naming the first extra one.  Returns (opts, positionals)."""
    opts, rest = parse_opts(args, table, command)
    if opts.get("help"):
        sys.stdout.write(usage or "")
        return None
    if len(rest) > max_positional:
        raise UsageError(f"{command}: unexpected argument {rest[max_positional]!r}")
    return opts, rest


ID_MAX = 4294967294      # (uid_t)-1 means "no change" to the kernel, not an id


def ascii_int(text: object, most: int) -> int | None:
    """`text` as a decimal integer 0..most written in ASCII digits only, else None.

    str.isdigit() and int() also take other scripts' digits ("١٢") and superscripts
    ("²", which int() then refuses); a number is checked for length before int() sees
    it, which refuses more than 4300 digits."""
    if not isinstance(text, str) or not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(most)):
        return None
    value = int(digits)
    return value if value <= most else None


def int_opt(opts: dict[str, Any], key: str, flag: str, most: int = ID_MAX) -> int:
    """Option `key` (default 0) as an id 0..most; UsageError naming `flag` otherwise."""
    val = opts.get(key, "0")
    value = ascii_int(val, most)
    if value is not None:
        return value
    if isinstance(val, str) and val.isascii() and val.isdigit():
        raise UsageError(f"{flag} {quote(val)}: not a valid id (0..{most})")
    raise UsageError(f"{flag} {quote(val)}: not a non-negative integer")
