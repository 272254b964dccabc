"""plan.build on the fake host: build_plan is pure (it never loads the host's libcuda,
even for NVIDIA_REQUIRE_CUDA: plan.cache checks requirements before building), and the
device nodes a capability brings are one table for the plan and for `info`."""
import os
import subprocess
import sys

import pytest

from nvlaunch.host import cuda
from nvlaunch.host.driver import discover
from nvlaunch.host.driver_files import CAPABILITIES
from nvlaunch.host.view import HostView
from nvlaunch.plan import cache as plancache
from nvlaunch.plan.build import build_plan
from nvlaunch.plan.capabilities import devices_for
from nvlaunch.plan.records import BindDevice
from nvlaunch.plan.request import Request
from nvlaunch.render.info import info_data
from tests.conftest import REPO
from tests.fakehost import build_fake_host

REQUIRE = (("NVIDIA_REQUIRE_CUDA", "cuda>=12.0"),)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    # stand-ins without root: only the nodes' paths matter here, not their numbers
    h = build_fake_host(str(tmp_path_factory.mktemp("host") / "h"), gpus=2, stand_ins=True)
    return HostView(h.root, h.root, h.root)


def test_build_plan_never_loads_libcuda(host, monkeypatch):
    def refuse(driver):
        raise AssertionError("build_plan loaded libcuda")
    monkeypatch.setattr(cuda, "cuda_driver_version", refuse)
    plan = build_plan(Request("all", None, env=REQUIRE), host)
    assert plan.devices


def test_build_plan_imports_no_ctypes(host):
    code = ("import sys\nfrom nvlaunch.host.view import HostView\nfrom nvlaunch.plan.build import build_plan\n"
            "from nvlaunch.plan.request import Request\n"
            f"build_plan(Request('all', None, env={REQUIRE!r}), HostView(*{host.roots!r}))\n"
            "assert 'ctypes' not in sys.modules, 'ctypes imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_cache_checks_requirements_with_the_cuda_version(host, monkeypatch, tmp_path):
    monkeypatch.setenv("NVLAUNCH_NO_CACHE", "1")
    asked = []
    monkeypatch.setattr(cuda, "cuda_driver_version", lambda driver: asked.append(1) or 12040)
    plancache.cached_plan(Request("all", None, env=REQUIRE), host, None)
    assert asked == [1]
    from nvlaunch.core.errors import RequirementError
    with pytest.raises(RequirementError, match="cuda>=13.0"):
        plancache.cached_plan(Request("all", None, env=(("NVIDIA_REQUIRE_CUDA", "cuda>=13.0"),)),
                              host, None)


@pytest.mark.parametrize("cap", sorted(CAPABILITIES))
def test_one_device_table_for_plan_and_info(host, cap):
    plan = build_plan(Request("none", cap), host)
    planned = [d.dst for d in plan.entries if isinstance(d, BindDevice)]
    listed = info_data(host, discover(host), ())["capabilities"][cap]["devices"]
    present = [p for p in listed if os.path.exists(host.dev(p))]
    assert planned == present, (cap, planned, listed)
    assert listed == [p for p, _ in devices_for({cap})]
