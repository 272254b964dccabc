"""core.records: records are real, distinct types (a Tmpfs never equals a Symlink or a
plain tuple), immutable, hashable by type and value, validated on construction and on
replace(); and making them costs no `collections` import."""
import subprocess
import sys

import pytest

from nvlaunch.core.records import rebuild, record, replace, values
from nvlaunch.plan.devices import DeviceRule
from nvlaunch.plan.records import BindFile, Plan, Symlink, Tmpfs
from tests.conftest import REPO


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


def test_records_need_no_collections():
    """What a record class costs to make is kept off the launch path: no `collections`
    (namedtuple compiles source with exec() for each class, and the package costs 2 ms
    to import).  Speed itself is measured by the benchmark, never asserted here."""
    code = ("import sys\n"
            "import nvlaunch.core.records, nvlaunch.plan.records, nvlaunch.exec.runroot\n"
            "import nvlaunch.frontends.run, nvlaunch.plan.cache\n"
            "assert 'collections' not in sys.modules, 'collections imported'\n")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr


def test_arguments_bind_as_a_function_call_would():
    assert BindFile("/a", "/b") == BindFile("/a", "/b", True, "required")
    assert BindFile("/a", "/b", False) == BindFile("/a", "/b", False, "required")
    assert BindFile("/a", dst="/b", policy="optional").policy == "optional"
    assert BindFile(src="/a", dst="/b").readonly is True
    for args, kwargs in ((("/a",), {}), (("/a", "/b", True, "x", 5), {}), (("/a", "/b"), {"src": "/c"}),
                         (("/a", "/b"), {"nope": 1})):
        with pytest.raises(TypeError):
            BindFile(*args, **kwargs)
    assert repr(Symlink("t", "/l")) == "Symlink(target='t', link='/l')"
