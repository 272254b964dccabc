"""`@record`: immutable records as named tuples, declared like frozen dataclasses.

nvlaunch's plain data (the plan, requests, driver files, GPUs) is built on every launch,
in a process that lives a few milliseconds.  Importing `dataclasses` (and `inspect`,
which it pulls in) and generating each class's methods cost more there than discovery
itself, so records are named tuples: created in C, immutable, comparable, hashable.

    @record
    class Gpu:
        index: int
        model: str = "?"
        def __post_init__(self): ...     # optional: validation after construction

Fields are the annotated names in order, defaults their class attributes; methods,
properties and class methods are kept.  Unlike a dataclass, a record equals a plain
tuple of the same values, and every field takes part in comparisons.
"""
from __future__ import annotations

from collections import namedtuple


def record(cls):
    names = list(cls.__dict__.get("__annotations__", {}))
    defaults = []
    for name in names:
        if name in cls.__dict__:
            defaults.append(cls.__dict__[name])
        elif defaults:
            raise TypeError(f"{cls.__name__}.{name}: field without default after one with")
    base = namedtuple(cls.__name__, names, defaults=defaults or None)
    body = {k: v for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__", "__annotations__")}
    body["__slots__"] = ()
    post_init = body.pop("__post_init__", None)
    if post_init is not None:
        def __new__(klass, *args, **kwargs):
            self = base.__new__(klass, *args, **kwargs)
            post_init(self)
            return self
        body["__new__"] = __new__
        body["_make"] = classmethod(lambda klass, it: klass(*it))
    return type(cls.__name__, (base,), body)
