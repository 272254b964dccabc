"""`@record`: immutable records as named tuples, declared like frozen dataclasses.

nvlaunch's plain data (the plan, requests, driver files, GPUs) is built on every launch,
in a process that lives a few milliseconds.  Importing `dataclasses` (and `inspect`,
which it pulls in) and generating each class's methods cost more there than discovery
itself, so records are named tuples: created in C, immutable, hashable.

    @record
    class Gpu:
        index: int
        model: str = "?"
        def __post_init__(self): ...     # optional: validation after construction

Fields are the annotated names in order, defaults their class attributes; methods,
properties and class methods are kept.  Two records are equal only when they are of the
same type and hold the same values: `Tmpfs("/x", "y") != Symlink("/x", "y")`, and a
record never equals a plain tuple (a named tuple alone would say both are equal).

For type checkers `record` is a dataclass transform (PEP 681): mypy sees every field,
its type and the generated constructor.  At run time `typing` is never imported (the
`TYPE_CHECKING` name below is what mypy keys on).  `replace(rec, **changes)` and
`values(rec)` are the two tuple operations callers use, typed for mypy.
"""
from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs):
        return lambda f: f


def _eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _ne(self: tuple[Any, ...], other: object) -> bool:
    return not (type(self) is type(other) and tuple.__eq__(self, other))


def _hash(self: tuple[Any, ...]) -> int:
    return hash((type(self).__name__, tuple.__hash__(self)))


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    names = list(cls.__dict__.get("__annotations__", {}))
    defaults = []
    for name in names:
        if name in cls.__dict__:
            defaults.append(cls.__dict__[name])
        elif defaults:
            raise TypeError(f"{cls.__name__}.{name}: field without default after one with")
    # mypy only follows namedtuple() with literal names; the fields here are computed
    base = namedtuple(cls.__name__, names, defaults=defaults or None)  # type: ignore[misc]
    body = {k: v for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__", "__annotations__")}
    body["__slots__"] = ()
    body["__eq__"], body["__ne__"], body["__hash__"] = _eq, _ne, _hash
    post_init = body.pop("__post_init__", None)
    if post_init is not None:
        def __new__(klass: type[Any], *args: Any, **kwargs: Any) -> Any:
            self = base.__new__(klass, *args, **kwargs)
            post_init(self)
            return self
        body["__new__"] = __new__
        body["_make"] = classmethod(lambda klass, it: klass(*it))
    return type(cls.__name__, (base,), body)


def replace(rec: T, **changes: Any) -> T:
    """A copy of record `rec` with some fields changed (validation runs again)."""
    # A record is a named tuple at run time, a plain class to mypy (the dataclass transform)
    return rec._replace(**changes)  # type: ignore[attr-defined, no-any-return]


def values(rec: Any) -> tuple[Any, ...]:
    """The field values of record `rec`, in declaration order."""
    return tuple(rec)


def rebuild(cls: Callable[..., T], vals: tuple[Any, ...]) -> T:
    """A record of type `cls` from `values(rec)` (what the plan cache stores)."""
    return cls(*vals)
