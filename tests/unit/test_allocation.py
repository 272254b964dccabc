"""A scheduler's GPU allocation (nvlaunch.host.allocation) and selection inside it
(nvlaunch.plan.selection.allocated_spec), without root: the fake host's /proc is real
files; device numbers of gres.conf files and the device cgroup's answer are stood in for
(tests/kernel/test_slurm.py runs the real thing under Slurm)."""
import os

import pytest

from nvlaunch.core.errors import SelectionError
from nvlaunch.host import allocation as A
from nvlaunch.host.view import HostView
from nvlaunch.plan import selection as S
from tests.fakehost import build_fake_host


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return build_fake_host(str(tmp_path_factory.mktemp("alloc") / "host"), gpus=4, stand_ins=True)


@pytest.fixture
def view(fake):
    return HostView(fake.driver_root, fake.dev_root, fake.proc_root)


@pytest.fixture
def slurm(tmp_path, monkeypatch, fake):
    """slurm(order, extra="") -> a Slurm task environment whose gres.conf lists the fake
    GPUs' nodes in `order` (minors); File= nodes map to their minors by name."""
    monkeypatch.setattr(A, "_minor_of", lambda p: int(p.rsplit("nvidia", 1)[1])
                        if p.rsplit("nvidia", 1)[1].isdigit() else None)
    monkeypatch.setattr(A, "cgroup_denies", lambda path, groups=None: False)

    def make(order, extra="", **env):
        (tmp_path / "gres.conf").write_text(
            "AutoDetect=off\n" + extra + "".join(f"Name=gpu File={fake.root}/dev/nvidia{m}\n" for m in order))
        return {"SLURM_CONF": str(tmp_path / "slurm.conf"), "SLURM_JOB_ID": "7",
                "SLURMD_NODENAME": "node1", **env}
    return make


def test_expand_hostlist():
    assert A.expand_hostlist("/dev/nvidia[0-2,5]") == [f"/dev/nvidia{i}" for i in (0, 1, 2, 5)]
    assert A.expand_hostlist("gpu[08-10]") == ["gpu08", "gpu09", "gpu10"]
    assert A.expand_hostlist("/dev/nvidia3") == ["/dev/nvidia3"]
    with pytest.raises(ValueError):
        A.expand_hostlist("/dev/nvidia[0-")


def test_parse_gres_conf_node_lines_and_order():
    text = ("# cluster-wide\nAutoDetect=off\n"
            "NodeName=node[1-2] Name=gpu Type=h200 File=/dev/nvidia[3,1]\n"
            "NodeName=other Name=gpu File=/dev/nvidia9\n"
            "Name=gpu File=/dev/nvidia0   # every node\n"
            "Name=mps Count=100\n")
    want = A.GresGpus(("/dev/nvidia3", "/dev/nvidia1", "/dev/nvidia0"), "off")
    assert A.parse_gres_conf(text, "node2") == want
    assert A.parse_gres_conf(text, "other").files == ("/dev/nvidia9", "/dev/nvidia0")
    assert A.parse_gres_conf("AutoDetect=nvml\n", "n").autodetect == "nvml"


def test_no_scheduler_means_no_allocation(view):
    assert A.read_allocation(view, {}) is None
    assert S.allocated_spec("all", view, {}) is None
    assert S.allocated_spec("void", view, {"SLURM_STEP_GPUS": "x"}) is None    # not even read


def test_slurm_ids_follow_gres_conf_not_pci_order(view, fake, slurm):
    env = slurm((2, 3, 0, 1), SLURM_STEP_GPUS="0,1", SLURM_STEP_ID="0")
    alloc = A.read_allocation(view, env)
    assert alloc.minors == (2, 3) and "Slurm job 7 step 0 (SLURM_STEP_GPUS=0,1)" in alloc.source
    by_minor = {g.minor: g for g in fake.gpus}
    # in PCI order: minor 3 is index 2, minor 2 is index 3
    assert S.allocated_spec("all", view, env) == f"{by_minor[3].uuid},{by_minor[2].uuid}"
    assert S.allocated_spec("1", view, env) == by_minor[2].uuid
    assert S.allocated_spec(by_minor[3].bus_id, view, env) == by_minor[3].uuid


def test_outside_the_allocation_is_an_error_naming_it(view, fake, slurm):
    env = slurm((0, 1, 2, 3), SLURM_JOB_GPUS="1")
    out = next(g for g in fake.gpus if g.minor == 0)
    for item in (out.uuid, out.uuid[:12], out.bus_id):
        with pytest.raises(SelectionError, match=r"is outside this allocation \(Slurm job 7 "):
            S.allocated_spec(item, view, env)
    with pytest.raises(SelectionError, match=r"no GPU with index 1 \(this allocation .* has 1 GPU: 0\)"):
        S.allocated_spec("1", view, env)
    with pytest.raises(SelectionError, match="unknown GPU 'GPU-ffff'"):
        S.allocated_spec("GPU-ffff", view, env)


def test_slurm_task_without_gpu_variables_has_none(view, slurm):
    env = slurm((0, 1, 2, 3))
    assert A.read_allocation(view, env).minors == ()
    assert S.allocated_spec("all", view, env) == "none"
    with pytest.raises(SelectionError, match="has no GPUs"):
        S.allocated_spec("0", view, env)
    # a --container step: Slurm 22.05 gives the runtime no GPU variables
    assert A.read_allocation(view, {**env, "SLURM_CONTAINER": "/b"}) is None


def test_slurm_ids_need_gres_conf(view, tmp_path):
    env = {"SLURM_CONF": str(tmp_path / "slurm.conf"), "SLURM_STEP_GPUS": "0"}
    with pytest.raises(SelectionError, match="gres.conf cannot be read"):
        A.read_allocation(view, env)


def test_slurm_id_beyond_gres_conf(view, slurm):
    with pytest.raises(SelectionError, match="GPU id 4, but .* lists 4 GPU file"):
        A.read_allocation(view, slurm((0, 1, 2, 3), SLURM_STEP_GPUS="4"))
    with pytest.raises(SelectionError, match="not a list of Slurm GPU ids"):
        A.read_allocation(view, slurm((0, 1, 2, 3), SLURM_STEP_GPUS="gpu0"))


def test_autodetect_numbers_in_pci_order(view, fake, slurm, tmp_path):
    env = slurm((), SLURM_STEP_GPUS="0,3")
    (tmp_path / "gres.conf").write_text("AutoDetect=nvml\n")
    assert S.allocated_spec("all", view, env) == f"{fake.gpus[0].uuid},{fake.gpus[3].uuid}"


def test_device_cgroup_alone(view, fake, monkeypatch):
    monkeypatch.setattr(A, "cgroup_denies",
                        lambda path, groups=None: not path.endswith(("nvidia0", "nvidia3")))
    alloc = A.read_allocation(view, {})
    assert sorted(alloc.minors) == [0, 3] and alloc.source == "the device cgroup"
    want = [g.uuid for g in fake.gpus if g.minor in (0, 3)]
    assert S.allocated_spec("all", view, {}) == ",".join(want)


def test_slurm_and_cgroup_intersect(view, slurm, monkeypatch):
    env = slurm((0, 1, 2, 3), SLURM_STEP_GPUS="0,1")
    monkeypatch.setattr(A, "cgroup_denies", lambda path, groups=None: path.endswith("nvidia1"))
    assert A.read_allocation(view, env).minors == (0,)


@pytest.mark.parametrize("denied,env", [
    ((), {}),                                   # nothing restricts: unrestricted
    ((2,), {}),                                 # the cgroup refuses nvidia2
    ((), {"SLURM_JOB_ID": "7"}),                # a Slurm task: ask read_allocation
    ((), {"SLURM_STEP_GPUS": "0"}),
])
def test_unrestricted_answers_as_read_allocation(view, monkeypatch, denied, env):
    """The launch's fast question: True only where read_allocation() says None."""
    asked = []

    def denies(path, groups=None):
        asked.append(os.path.basename(path))
        return any(path.endswith(f"/nvidia{m}") for m in denied)
    monkeypatch.setattr(A, "cgroup_denies", denies)
    fast = A.unrestricted(view, env)
    assert fast is (not env and not denied)
    assert set(asked) <= {f"nvidia{m}" for m in range(4)}       # the GPU nodes alone
    if fast:
        assert sorted(asked) == [f"nvidia{m}" for m in range(4)]   # every one of them
        assert A.read_allocation(view, env) is None
    elif not env:
        assert 2 not in A.read_allocation(view, env).minors
    monkeypatch.setattr(A, "cgroup_denies", lambda path, groups=None: False)
    assert A.unrestricted(HostView("/nonexistent", "/nonexistent", "/nonexistent"), {}) is False


def test_allocated_spec_is_none_outside_an_allocation(view, monkeypatch):
    """Outside any allocation `run` keeps the spec and leaves CUDA_VISIBLE_DEVICES alone."""
    monkeypatch.setattr(A, "cgroup_denies", lambda path, groups=None: False)
    assert S.allocated_spec("all", view, {}) is None
    assert S.allocated_spec("void", view, {}) is None


def test_cgroup_denies_reads_the_mode_bits(tmp_path):
    """access() refused and the mode bits allow it: the cgroup; mode bits refuse: unknown."""
    assert A.cgroup_denies(str(tmp_path / "missing")) is False
    assert A.cgroup_denies("/dev/null") is False          # allowed everywhere
    f = tmp_path / "plain"
    f.write_text("")
    os.chmod(f, 0)
    assert A.cgroup_denies(str(f)) is False               # not a device


def test_renumbered_env():
    env = [("A", "1"), ("CUDA_VISIBLE_DEVICES", "0,2"), ("GPU_DEVICE_ORDINAL", "0,2")]
    assert S.renumbered_env(env, "GPU-a,GPU-b") == [("A", "1"), ("CUDA_VISIBLE_DEVICES", "0,1"),
                                                    ("GPU_DEVICE_ORDINAL", "0,1")]
    assert S.renumbered_env(env, "none")[1] == ("CUDA_VISIBLE_DEVICES", "")
    assert S.renumbered_env([("A", "1")], "GPU-a") == [("A", "1")]


def test_setup_slurm_oci_conf(tmp_path, monkeypatch):
    from nvlaunch.setup import slurm as SL
    from nvlaunch.setup.common import Writer
    nvl = tmp_path / "nvlaunch"
    nvl.write_text("#!/bin/sh\n")
    nvl.chmod(0o755)
    conf = tmp_path / "oci.conf"
    conf.write_text('ContainerPath=/run/slurm-oci\nRunTimeRun="runc run %n"\n')
    w = Writer(False, out=open(os.devnull, "w"))
    gopts = {"dev_root": str(tmp_path / "d%x")}
    SL.setup_slurm(gopts, {"config": str(conf), "hook_path": str(nvl)}, w)
    text = conf.read_text()
    assert text.startswith("ContainerPath=/run/slurm-oci\n"
                           '# (replaced by nvlaunch) RunTimeRun="runc run %n"\n')
    run = [ln for ln in text.splitlines() if ln.startswith("RunTimeRun=")]
    assert run == [f'RunTimeRun="{nvl} --dev-root {tmp_path}/d%%x run --gpus all --bundle %b"']
    for key in ("RunTimeQuery", "RunTimeKill", "RunTimeDelete"):
        assert sum(ln.startswith(key + "=") for ln in text.splitlines()) == 1
    # 22.05 refuses these keys and dies on these replacements
    assert not any(k in text for k in ("IgnoreFileConfigJson", "EnvExclude", "%U", "%m", "%p", "%@"))
    SL.setup_slurm(gopts, {"config": str(conf), "hook_path": str(nvl)}, w)      # again: the same
    assert conf.read_text() == text
    monkeypatch.setenv("SLURM_CONF", "/etc/x/slurm.conf")
    assert SL.default_config() == "/etc/x/oci.conf"
