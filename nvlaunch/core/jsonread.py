"""JSON reading through the interpreter's C scanner (`_json`) alone.

A hook reads two small JSON documents (the OCI state, the bundle's config.json) on
every container start.  `import json` pulls in json.decoder, json.encoder and, through
them, `re` and `enum`: about 5 ms, a sixth of the whole hook.  `_json.make_scanner` is
the same C parser `json.loads` uses; it only needs a context object with the decoder's
settings, and it leaves leading/trailing whitespace and trailing data to the caller.
"""
from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

_WHITESPACE = " \t\n\r"


def _constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


class _Context:
    """The attributes the C scanner reads from a json.JSONDecoder."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)
    memo: dict[str, Any] = {}


# typeshed types the context as a make_scanner itself; any object with its attributes works
_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]


def loads(text: str | bytes) -> Any:
    """Like json.loads; ValueError for anything that is not one JSON document."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = text.strip(_WHITESPACE)
    try:
        value, end = _scan(text, 0)
    except StopIteration as stop:
        raise ValueError(f"no JSON value at character {stop.value}") from None
    except ValueError:
        raise
    except Exception:   # noqa: BLE001 - keep the contract: ValueError only
        # The scanner makes its JSONDecodeError from json.decoder, which (not imported
        # on the hot path) it cannot always load mid-scan: a SystemError naming the
        # scanner object.  Only now, on the error path, import it and scan again for
        # the real message and position.
        import json.decoder   # noqa: F401
        try:
            _Context.memo.clear()
            _scan(text, 0)
        except StopIteration as stop:
            raise ValueError(f"no JSON value at character {stop.value}") from None
        except ValueError as err:
            raise ValueError(str(err)) from None
        except Exception:   # noqa: BLE001
            pass
        raise ValueError("not valid JSON") from None
    finally:
        _Context.memo.clear()
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value
