"""`@record`: immutable records as named tuples, declared like frozen dataclasses.

nvlaunch's plain data (the plan, requests, driver files, GPUs) is built on every launch,
in a process that lives a few milliseconds.  Importing `dataclasses` (and `inspect`,
which it pulls in) and generating each class's methods cost more there than discovery
itself, and so does `collections.namedtuple`, which compiles source text with exec()
for each class (about 0.1 ms each, a dozen classes on the way to a container).  So a
record is a tuple subclass made here directly: fields are C itemgetter properties, the
constructor is one tuple.__new__ when every field is given, which is how the plan cache
rebuilds them; immutable, hashable.

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

from _operator import itemgetter as _itemgetter   # the C module: `operator` costs an import

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform   # (typing has it from 3.11)

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
    fields = tuple(names)
    n = len(fields)
    body: dict[str, Any] = {k: v for k, v in cls.__dict__.items()
                            if k not in names and k not in ("__dict__", "__weakref__", "__annotations__")}
    post_init = body.pop("__post_init__", None)

    tail = tuple(defaults)
    required = n - len(tail)

    def __new__(klass: type[Any], *args: Any, **kwargs: Any) -> Any:
        if kwargs or not required <= len(args) <= n:
            args = _bind(klass, args, kwargs)
        elif len(args) < n:                    # positional, the rest defaulted
            args = args + tail[len(args) - required:]
        self = _tuple_new(klass, args)
        if post_init is not None:
            post_init(self)
        return self

    body.update({
        "__slots__": (), "__new__": __new__, "_fields": fields, "__match_args__": fields,
        "_field_defaults": dict(zip(fields[n - len(defaults):], defaults)),
        "__eq__": _eq, "__ne__": _ne, "__hash__": _hash, "__repr__": _repr,
        "__getnewargs__": _getnewargs, "_replace": _replace, "_make": classmethod(_make),
    })
    for i, name in enumerate(fields):
        body[name] = property(_itemgetter(i), doc=f"{cls.__name__}.{name}")
    return type(cls.__name__, (tuple,), body)


_tuple_new = tuple.__new__


def _bind(klass: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The field values of a constructor call with keywords or defaults, checked as a
    function's arguments would be."""
    fields, defaults = klass._fields, klass._field_defaults
    if len(args) > len(fields):
        raise TypeError(f"{klass.__name__}() takes {len(fields)} arguments, {len(args)} given")
    vals = list(args)
    for name in fields[len(args):]:
        if name in kwargs:
            vals.append(kwargs.pop(name))
        elif name in defaults:
            vals.append(defaults[name])
        else:
            raise TypeError(f"{klass.__name__}() missing argument {name!r}")
    if kwargs:
        raise TypeError(f"{klass.__name__}() got unexpected or repeated arguments {sorted(kwargs)}")
    return tuple(vals)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self))
    return f"{type(self).__name__}({inner})"


def _getnewargs(self: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(self)


def _replace(self: Any, **changes: Any) -> Any:
    vals = [changes.pop(name, value) for name, value in zip(self._fields, self)]
    if changes:
        raise TypeError(f"{type(self).__name__}: no fields {sorted(changes)}")
    return type(self)(*vals)


def _make(klass: Any, iterable: Any) -> Any:
    return klass(*iterable)


def replace(rec: T, **changes: Any) -> T:
    """A copy of record `rec` with some fields changed (validation runs again)."""
    # A record is a tuple with a _replace method at run time, a plain class to mypy (the
    # dataclass transform), which sees no _replace
    return rec._replace(**changes)  # type: ignore[attr-defined, no-any-return]


def values(rec: Any) -> tuple[Any, ...]:
    """The field values of record `rec`, in declaration order."""
    return tuple(rec)


def rebuild(cls: Callable[..., T], vals: tuple[Any, ...]) -> T:
    """A record of type `cls` from `values(rec)` (what the plan cache stores)."""
    return cls(*vals)
