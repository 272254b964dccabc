"""`pull`, `images`, `rmi`: the user's image cache (nvlaunch.image, docs/images.md)."""
from __future__ import annotations

import sys

from nvlaunch.core.argv import HELP, parse_command
from nvlaunch.core.errors import UsageError

USAGES = {
    "pull": "usage: nvlaunch pull IMAGE\n"
            "  fetch and unpack IMAGE into the image cache; prints its digest\n"
            "  IMAGE: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF],\n"
            "         docker://HOST/NAME[:TAG|@DIGEST]\n",
    "images": "usage: nvlaunch images [--json]\n  the images in the cache\n",
    "rmi": "usage: nvlaunch rmi IMAGE\n"
           "  remove IMAGE (as it was pulled, or by digest) from the cache\n",
}


def _one(args: list, command: str, table: dict | None = None) -> tuple[dict, str] | None:
    parsed = parse_command(args, {**(table or {}), **HELP}, command, USAGES[command],
                           max_positional=0 if command == "images" else 1)
    if parsed is None:
        return None
    opts, rest = parsed
    if not rest and command != "images":
        raise UsageError(f"{command}: no IMAGE given (see `nvlaunch {command} --help`)")
    return opts, rest[0] if rest else ""


def cmd_pull(gopts: dict, args: list) -> int:
    parsed = _one(args, "pull")
    if parsed is None:
        return 0
    from nvlaunch.core import interrupt
    from nvlaunch.image.cache import Cache
    from nvlaunch.image.reference import parse
    ref = parse(parsed[1])
    # SIGTERM, SIGINT, SIGHUP end the pull through its error path: its temporaries go
    interrupt.bound(0)
    try:
        image = Cache.default().pull(ref)
    finally:
        interrupt.unbound()
    sys.stdout.write(f"{image.digest}\n")
    return 0


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def cmd_images(gopts: dict, args: list) -> int:
    parsed = _one(args, "images", {"--json": ("json", False, False)})
    if parsed is None:
        return 0
    from nvlaunch.image.cache import Cache
    rows = Cache.default().listing()
    if parsed[0].get("json"):
        import json
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    import time
    lines = [("IMAGE", "DIGEST", "SIZE", "PULLED")]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["pulled"])) \
            if isinstance(r.get("pulled"), int) else "?"
        lines.append((r["name"], str(r["digest"])[7:19], _size(r.get("size")), when))
    widths = [max(len(row[i]) for row in lines) for i in range(3)]
    for row in lines:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3] + "\n")
    return 0


def cmd_rmi(gopts: dict, args: list) -> int:
    parsed = _one(args, "rmi")
    if parsed is None:
        return 0
    from nvlaunch.image.cache import Cache
    for name in Cache.default().remove(parsed[1]):
        sys.stdout.write(f"removed {name}\n")
    return 0
