"""NVIDIA_REQUIRE_* / NVIDIA_DISABLE_REQUIRE (nvlaunch.plan.require), reference 1.3."""
import pytest

from nvlaunch.plan import require as R
from nvlaunch.core.errors import RequirementError

DRIVER = "580.159.04"
CUDA_MSG = ("please update your driver to a newer version, or use an earlier cuda container")


class Cuda:
    """A cuda_version_fn that counts its calls."""

    def __init__(self, value=13000):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def ok(env, driver=DRIVER, cuda=13000, gpus=()):
    R.check(env, driver, Cuda(cuda), gpus)
    return True


def fails(env, driver=DRIVER, cuda=13000, gpus=()):
    with pytest.raises(RequirementError) as exc:
        R.check(env, driver, Cuda(cuda), gpus)
    return str(exc.value)


# --- parsing -----------------------------------------------------------------------------------

def test_expression_grammar():
    terms = R.parse_expression("cuda>=10.0 brand=tesla,driver>=384,driver<385")
    assert [[str(c) for c in t] for t in terms] == [
        ["cuda>=10.0"], ["brand=tesla", "driver>=384", "driver<385"]]
    assert [str(c) for c in R.parse_expression("  cuda!=12.1 ,, arch<9.0  ")[0]] == ["cuda!=12.1"]
    assert [str(c) for c in R.parse_expression("arch<=9.0,arch>7")[0]] == ["arch<=9.0", "arch>7"]
    assert R.parse_expression("") == []


@pytest.mark.parametrize("bad", ["cuda", "cuda>>10", "cuda=>10", "foo>=1", "cuda>=x.y",
                                 "brand>=tesla", ">=10", "cuda>=", "driver<1.a"])
def test_invalid_conditions(bad):
    with pytest.raises(RequirementError) as exc:
        R.check({"NVIDIA_REQUIRE_X": bad}, DRIVER, Cuda())
    assert "invalid requirement" in str(exc.value)
    assert "NVIDIA_REQUIRE_X" in str(exc.value)


def test_requirements_collected():
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_REQUIRE_JETPACK": "csv-mounts=all",
           "NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS": "x", "NVIDIA_REQUIRE_A": "driver>=1",
           "NVIDIA_REQUIRE_EMPTY": " ", "PATH": "/bin", "CUDA_VERSION": "12.2.0"}
    assert R.requirements(env) == [("NVIDIA_REQUIRE_A", "driver>=1"),
                                   ("NVIDIA_REQUIRE_CUDA", "cuda>=12.0")]


def test_legacy_cuda_image():
    # CUDA_VERSION without NVIDIA_REQUIRE_CUDA: an implicit cuda>=major.minor
    assert R.requirements({"CUDA_VERSION": "12.2.0"}) == [("CUDA_VERSION", "cuda>=12.2")]
    assert ok({"CUDA_VERSION": "12.2.0"})
    msg = fails({"CUDA_VERSION": "13.1.0"})
    assert msg.startswith(f"unsatisfied condition: cuda>=13.1, {CUDA_MSG}")


def test_parse_bool_like_go():
    for v in ("1", "t", "T", "TRUE", "true", "True"):
        assert R.parse_bool(v) is True
    for v in ("0", "f", "F", "FALSE", "false", "False"):
        assert R.parse_bool(v) is False
    for v in ("", "yes", "tRUE", "2", " true"):
        assert R.parse_bool(v) is None


def test_format_cuda():
    assert R.format_cuda(13000) == "13.0"
    assert R.format_cuda(12020) == "12.2"
    assert R.format_cuda(11080) == "11.8"
    assert R.format_cuda(10010) == "10.1"


# --- evaluation ---------------------------------------------------------------------------------

def test_typical_cuda_image():
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=10.0 brand=tesla,driver>=384,driver<385"}
    assert ok(env)                                             # CUDA 13.0 >= 10.0
    assert ok(env, driver="384.81", cuda=9000)                 # the Tesla/384 branch
    msg = fails(env, driver="390.12", cuda=9010)
    # the first term's failure is reported, with NVIDIA's text
    assert msg.startswith(f"unsatisfied condition: cuda>=10.0, {CUDA_MSG}")
    assert "NVIDIA_REQUIRE_CUDA" in msg
    # with GPU information the brand counts
    assert ok(env, driver="384.81", cuda=9000, gpus=[{"brand": "Tesla"}])
    fails(env, driver="384.81", cuda=9000, gpus=[{"brand": "GeForce"}])


def test_exact_message():
    with pytest.raises(RequirementError) as exc:
        R.check({"NVIDIA_REQUIRE_CUDA": "cuda>=13.1"}, DRIVER, Cuda(13000))
    err = exc.value
    assert err.args[0] == ("unsatisfied condition: cuda>=13.1, please update your driver to a "
                           "newer version, or use an earlier cuda container")
    assert "CUDA 13.0" in err.hint and "NVIDIA_DISABLE_REQUIRE" in err.hint


@pytest.mark.parametrize("expr, cuda, result", [
    ("cuda>=13.0", 13000, True),
    ("cuda>=13", 13000, True),
    ("cuda=13.0.0", 13000, True),                 # trailing .0 ignored
    ("cuda>13.0", 13000, False),
    ("cuda<13.1", 13000, True),
    ("cuda<=12.9", 13000, False),
    ("cuda!=13.0", 13000, False),
    ("cuda>=12.10", 12020, False),                # numeric per field: 12.2 < 12.10
    ("cuda>=12.2", 12020, True),
])
def test_cuda_compare(expr, cuda, result):
    env = {"NVIDIA_REQUIRE_CUDA": expr}
    if result:
        assert ok(env, cuda=cuda)
    else:
        assert fails(env, cuda=cuda).startswith(f"unsatisfied condition: {expr}, {CUDA_MSG}")


@pytest.mark.parametrize("expr, result", [
    ("driver>=580", True), ("driver>=580.159.4", True), ("driver>580.159.04", False),
    ("driver=580.159.04", True), ("driver=580.159.4.0", True), ("driver<580.160", True),
    ("driver>=580.159.5", False), ("driver!=470", True), ("driver<=580.95", False),
])
def test_driver_compare(expr, result):
    env = {"NVIDIA_REQUIRE_DRIVER": expr}
    if result:
        assert ok(env)
    else:
        msg = fails(env)
        assert msg.startswith(f"unsatisfied condition: {expr}")
        assert CUDA_MSG not in msg and DRIVER in msg


def test_and_or():
    assert ok({"NVIDIA_REQUIRE_X": "driver>=999 driver>=500"})          # OR
    fails({"NVIDIA_REQUIRE_X": "driver>=500,driver>=999"})               # AND
    assert ok({"NVIDIA_REQUIRE_X": "driver>=999,cuda>=1 driver>=500,cuda>=13"})
    # separate variables are ANDed
    msg = fails({"NVIDIA_REQUIRE_A": "driver>=500", "NVIDIA_REQUIRE_B": "driver<500"})
    assert "driver<500" in msg and "NVIDIA_REQUIRE_B" in msg


def test_arch_and_brand_pass_without_gpu_information():
    env = {"NVIDIA_REQUIRE_ARCH": "arch>=9.0", "NVIDIA_REQUIRE_BRAND": "brand=quadro"}
    assert ok(env)                                   # no NVML: documented pass
    assert ok(env, gpus=[{}])                        # a GPU with nothing known
    assert ok(env, gpus=[{"arch": "9.0", "brand": "QUADRO"}])
    assert "arch>=9.0" in fails(env, gpus=[{"arch": "9.0", "brand": "quadro"},
                                           {"arch": "8.6", "brand": "quadro"}])
    assert "brand=quadro" in fails(env, gpus=[{"arch": "9.0", "brand": "tesla"}])
    assert ok({"NVIDIA_REQUIRE_B": "brand!=geforce"}, gpus=[{"brand": "Tesla"}])


def test_cuda_fn_called_only_when_needed():
    cuda = Cuda()
    R.check({"NVIDIA_REQUIRE_DRIVER": "driver>=500", "PATH": "/bin"}, DRIVER, cuda)
    R.check({}, DRIVER, cuda)
    R.check({"NVIDIA_REQUIRE_CUDA": "cuda>=10", "NVIDIA_DISABLE_REQUIRE": "true"}, DRIVER, cuda)
    assert cuda.calls == 0
    R.check({"NVIDIA_REQUIRE_A": "cuda>=10", "NVIDIA_REQUIRE_B": "cuda<20 cuda>30"}, DRIVER, cuda,
            [{}, {}])
    assert cuda.calls == 1                           # once, however many conditions/GPUs


def test_unknown_cuda_version_fails_cuda_conditions():
    msg = fails({"NVIDIA_REQUIRE_CUDA": "cuda>=10.0"}, cuda=None)
    assert msg.startswith(f"unsatisfied condition: cuda>=10.0, {CUDA_MSG}")
    assert "unknown" in msg
    assert ok({"NVIDIA_REQUIRE_CUDA": "cuda>=10.0 driver>=500"}, cuda=None)
    with pytest.raises(RequirementError):
        R.check({"NVIDIA_REQUIRE_CUDA": "cuda>=10.0"}, DRIVER, None)


@pytest.mark.parametrize("value, disabled", [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("f", False), ("false", False), ("False", False), ("yes", False),
    ("", False), ("on", False),
])
def test_disable_require(value, disabled):
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=99.0", "NVIDIA_DISABLE_REQUIRE": value}
    assert R.disabled(env) is disabled
    if disabled:
        assert ok(env)
    else:
        fails(env)


def test_jetpack_is_skipped():
    assert ok({"NVIDIA_REQUIRE_JETPACK": "csv-mounts=all",
               "NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS": "not an expression"})
