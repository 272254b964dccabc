"""core.records: records are real, distinct types (a Tmpfs never equals a Symlink or a
plain tuple), immutable, hashable by type and value, validated on construction and on
replace(); and they stay as cheap to make as named tuples."""
import timeit
from collections import namedtuple

import pytest

from nvlaunch.core.records import rebuild, record, replace, values
from nvlaunch.plan.devices import DeviceRule
from nvlaunch.plan.records import BindFile, Plan, Symlink, Tmpfs


def test_records_of_different_types_are_never_equal():
    assert Tmpfs("/x", "y") != Symlink("/x", "y")
    assert not (Tmpfs("/x", "y") == Symlink("/x", "y"))
    assert Tmpfs("/x", "y") != ("/x", "y")
    assert Tmpfs("/x", "y") == Tmpfs("/x", "y")
    assert len({Tmpfs("/x", "y"), Symlink("/x", "y"), Tmpfs("/x", "y")}) == 2


def test_fields_defaults_and_immutability():
    b = BindFile("/h/libcuda.so.1", "/usr/lib/libcuda.so.1")
    assert (b.readonly, b.policy) == (True, "required")
    with pytest.raises(AttributeError):
        b.src = "/elsewhere"
    assert values(b) == ("/h/libcuda.so.1", "/usr/lib/libcuda.so.1", True, "required")
    assert rebuild(BindFile, values(b)) == b
    assert Plan().empty and not Plan(env=(("A", "1"),)).empty


def test_replace_keeps_the_type_and_validates_again():
    r = DeviceRule("c", 195, 0, "rw")
    assert replace(r, minor=1) == DeviceRule("c", 195, 1, "rw")
    assert type(replace(r, minor=1)) is DeviceRule
    with pytest.raises(ValueError):
        replace(r, access="x")
    with pytest.raises(ValueError):
        DeviceRule("q", 1, 1, "r")


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError):
        @record
        class Bad:
            a: int = 1
            b: int


def test_construction_costs_what_a_named_tuple_costs():
    """The type check in __eq__ must not slow what every launch does: make records."""
    Plain = namedtuple("Plain", "src dst readonly policy")
    n = 20000
    ours = min(timeit.repeat(lambda: BindFile("/a", "/b"), number=n, repeat=5))
    plain = min(timeit.repeat(lambda: Plain("/a", "/b", True, "required"), number=n, repeat=5))
    # informational bound, generous against noise: the same C constructor underneath
    assert ours < plain * 3, (ours, plain)
