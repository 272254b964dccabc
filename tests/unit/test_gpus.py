"""GPU enumeration and --gpus / NVIDIA_VISIBLE_DEVICES selection (nvlaunch.host.gpus).

Most cases use hand-made /proc trees (fast, and free to have shared UUID prefixes, odd
bus ids and MIG devices); one checks the fake host of tests/fakehost.py.
"""
import os

import pytest

from nvlaunch.host import gpus as G
from nvlaunch.plan import selection as S
from nvlaunch.core.errors import DiscoveryError, SelectionError
from nvlaunch.host.view import HostView
from tests.fakehost import build_fake_host, information_text, mig_minors_text, FakeGpu

UUID_A = "GPU-ec1c5bba-ae21-942b-3385-24458321be50"
UUID_B = "GPU-ec1c5bba-0000-1111-2222-333344445555"     # shares 8+ hex digits with A
UUID_C = "GPU-77aa0011-2233-4455-6677-8899aabbccdd"


def make_proc(root, gpus, excluded=()):
    """proc/driver/nvidia/gpus/<bus>/information for [(bus_id, minor, uuid)]."""
    for bus, minor, uuid in gpus:
        g = FakeGpu(index=0, minor=minor, uuid=uuid, bus_id=bus)
        text = information_text(g, "580.159.04")
        if uuid in excluded:
            text = text.replace("GPU Excluded:\t No", "GPU Excluded:\t Yes")
        d = os.path.join(root, "proc/driver/nvidia/gpus", bus)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "information"), "w") as f:
            f.write(text)
        os.makedirs(os.path.join(root, f"proc/driver/nvidia/capabilities/gpu{minor}/mig"),
                    exist_ok=True)
    return HostView(str(root), str(root), str(root))


def add_mig(root, minor, gi, cis, with_minors_file=True):
    """capabilities/gpu<minor>/mig/gi<gi>/{access,ci<N>/access}, minors as the driver numbers them."""
    base = os.path.join(root, f"proc/driver/nvidia/capabilities/gpu{minor}/mig/gi{gi}")
    gi_minor = 3 + minor * 15 * 9 + gi * 9
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "access"), "w") as f:
        f.write(f"DeviceFileMinor: {gi_minor}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    for ci in cis:
        os.makedirs(os.path.join(base, f"ci{ci}"), exist_ok=True)
        with open(os.path.join(base, f"ci{ci}", "access"), "w") as f:
            f.write(f"DeviceFileMinor: {gi_minor + 1 + ci}\nDeviceFileMode: 292\n")
    if with_minors_file:
        p = os.path.join(root, "proc/driver/nvidia-caps/mig-minors")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(mig_minors_text())
    return gi_minor


@pytest.fixture
def two(tmp_path):
    """Two GPUs whose minors are not in PCI order and whose UUIDs share a prefix."""
    host = make_proc(tmp_path, [("0000:07:00.0", 0, UUID_B), ("0000:06:00.0", 1, UUID_A)])
    return host, G.enumerate_gpus(host)


@pytest.fixture
def three(tmp_path):
    host = make_proc(tmp_path, [("0000:0a:00.0", 2, UUID_C), ("0000:07:00.0", 0, UUID_B),
                                ("0000:06:00.0", 1, UUID_A)])
    return host, G.enumerate_gpus(host)


def uuids(sel):
    return [g.uuid for g in sel.gpus]


# --- enumeration ------------------------------------------------------------------------------

def test_enumerate_fake_host(tmp_path):
    fake = build_fake_host(str(tmp_path / "host"), gpus=4)
    got = G.enumerate_gpus(HostView(fake.driver_root, fake.dev_root, fake.proc_root))
    assert [(g.index, g.minor, g.uuid, g.bus_id, g.model) for g in got] == \
        [(f.index, f.minor, f.uuid, f.bus_id, f.model) for f in fake.gpus]
    assert [g.minor for g in got] == [1, 0, 3, 2]            # minors are not indices


def test_pci_order_not_minor_order(two):
    host, gpus = two
    assert [(g.index, g.bus_id, g.minor, g.uuid) for g in gpus] == [
        (0, "0000:06:00.0", 1, UUID_A), (1, "0000:07:00.0", 0, UUID_B)]
    assert gpus[0].model == "NVIDIA H200"


def test_pci_order_is_numeric_with_domains(tmp_path):
    host = make_proc(tmp_path, [("0001:01:00.0", 0, "GPU-00000000-0000-0000-0000-000000000001"),
                                ("0000:c1:00.0", 1, "GPU-00000000-0000-0000-0000-000000000002"),
                                ("0000:41:00.0", 2, "GPU-00000000-0000-0000-0000-000000000003")])
    assert [g.bus_id for g in G.enumerate_gpus(host)] == \
        ["0000:41:00.0", "0000:c1:00.0", "0001:01:00.0"]


def test_no_driver_means_no_gpus(tmp_path):
    assert G.enumerate_gpus(HostView(str(tmp_path), str(tmp_path), str(tmp_path))) == ()


def test_excluded_gpus_are_left_out(tmp_path):
    host = make_proc(tmp_path, [("0000:06:00.0", 0, UUID_A), ("0000:07:00.0", 1, UUID_C)],
                     excluded=(UUID_A,))
    assert [(g.index, g.uuid) for g in G.enumerate_gpus(host)] == [(0, UUID_C)]


def test_broken_information_file(tmp_path):
    d = tmp_path / "proc/driver/nvidia/gpus/0000:06:00.0"
    d.mkdir(parents=True)
    (d / "information").write_text("Model: \t\t NVIDIA H200\n")
    with pytest.raises(DiscoveryError, match="0000:06:00.0/information"):
        G.enumerate_gpus(HostView(str(tmp_path), str(tmp_path), str(tmp_path)))


def test_bus_id_forms():
    assert G.parse_bus_id("0000:06:00.0") == (0, 6, 0, 0)
    assert G.parse_bus_id("00000000:06:00.0") == (0, 6, 0, 0)
    assert G.parse_bus_id("06:00.0") == (0, 6, 0, 0)
    assert G.parse_bus_id("0000:0A:1f.7") == (0, 10, 31, 7)
    assert G.parse_bus_id("0:1") is None
    assert G.parse_bus_id("06:00") is None
    assert G.format_bus_id((0, 6, 0, 0)) == "0000:06:00.0"
    assert G.format_bus_id((0, 6, 0, 0), nvml=True) == "00000000:06:00.0"


# --- selection: keywords ---------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "", "  ", "void", ",", " void "])
def test_void(two, spec):
    sel = S.select_gpus(spec, two[1], two[0])
    assert (sel.mode, sel.gpus, sel.migs) == ("void", (), ())
    assert sel.visible_devices == "void"


def test_none(two):
    sel = S.select_gpus("none", two[1], two[0])
    assert (sel.mode, sel.gpus, sel.migs) == ("none", (), ())
    assert sel.visible_devices == "none"


def test_all(two):
    sel = S.select_gpus("all", two[1], two[0])
    assert sel.mode == "devices" and sel.gpus == two[1] and sel.migs == ()
    assert sel.visible_devices == f"{UUID_A},{UUID_B}"
    assert S.select_gpus("all", (), None).gpus == ()


@pytest.mark.parametrize("cdi,plain", [("nvidia.com/gpu=all", "all"), ("nvidia.com/gpu=1", "1"),
                                       ("nvidia.com/gpu=0,nvidia.com/gpu=1", "0,1"),
                                       (f"nvidia.com/gpu={UUID_B}", UUID_B)])
def test_cdi_device_names_as_nvidias_runtime_takes_them(two, cdi, plain):
    """NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all (NVIDIA's CDI mode): the same GPUs."""
    assert S.select_gpus(cdi, two[1], two[0]) == S.select_gpus(plain, two[1], two[0])


@pytest.mark.parametrize("spec", ["all,0", "none,0", "0,void"])
def test_keywords_do_not_combine(two, spec):
    with pytest.raises(SelectionError, match="cannot be combined"):
        S.select_gpus(spec, two[1], two[0])


# --- selection: GPUs ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, want", [
    ("0", [UUID_A]),
    ("1", [UUID_B]),
    ("1,0", [UUID_B, UUID_A]),                 # request order kept
    ("0, 1 ,0", [UUID_A, UUID_B]),             # duplicates dropped, blanks trimmed
    (UUID_B, [UUID_B]),
    (UUID_A.upper().replace("GPU-", "gpu-"), [UUID_A]),  # case-insensitive
    ("GPU-ec1c5bba-a", [UUID_A]),              # unique prefix
    ("GPU-ec1c5bba-0", [UUID_B]),
    ("0000:07:00.0", [UUID_B]),
    ("07:00.0", [UUID_B]),
    ("00000000:06:00.0", [UUID_A]),
    ("1,0000:07:00.0,GPU-ec1c5bba-0", [UUID_B]),  # the same GPU three ways
    ("0,,1", [UUID_A, UUID_B]),                # empty items skipped
])
def test_select_gpu_forms(two, spec, want):
    sel = S.select_gpus(spec, two[1], two[0])
    assert sel.mode == "devices" and sel.migs == ()
    assert uuids(sel) == want
    assert sel.visible_devices == ",".join(want)


def test_select_without_host(two):
    assert uuids(S.select_gpus("1", two[1])) == [UUID_B]


def test_uppercase_hex_bus_id(three):
    host, gpus = three
    assert uuids(S.select_gpus("0000:0A:00.0", gpus, host)) == [UUID_C]
    assert S.select_gpus("2", gpus, host).gpus[0].minor == 2


def test_index_out_of_range(two):
    with pytest.raises(SelectionError) as exc:
        S.select_gpus("0,7", two[1], two[0])
    assert "'7'" in str(exc.value) and "2 GPUs" in str(exc.value)
    with pytest.raises(SelectionError, match="no GPUs"):
        S.select_gpus("0", (), None)


def test_ambiguous_prefix_names_candidates(two):
    with pytest.raises(SelectionError) as exc:
        S.select_gpus("GPU-ec1c5bba", two[1], two[0])
    msg = str(exc.value)
    assert "ambiguous" in msg and "'GPU-ec1c5bba'" in msg
    assert UUID_A in msg and UUID_B in msg


@pytest.mark.parametrize("spec, words", [
    ("GPU-ffffffff", ["unknown GPU", "'GPU-ffffffff'"]),
    ("GPU-", ["'GPU-'"]),
    ("0000:09:00.0", ["'0000:09:00.0'", "00000000:09:00.0"]),
    ("foo", ["unknown device", "'foo'"]),
    ("-1", ["'-1'"]),
    ("1.5", ["'1.5'"]),
    ("0:", ["'0:'"]),
    ("0,bar", ["'bar'"]),
])
def test_bad_items_name_themselves(two, spec, words):
    with pytest.raises(SelectionError) as exc:
        S.select_gpus(spec, two[1], two[0])
    for w in words:
        assert w in str(exc.value)


def test_plain_path_never_touches_nvml(two, monkeypatch):
    def boom(*a):
        raise AssertionError("NVML used on the plain path")
    monkeypatch.setattr(S, "nvml_mig_uuids", boom)
    for spec in ("all", "none", "void", "0", UUID_A, "0000:06:00.0", "GPU-ec1c5bba-a"):
        S.select_gpus(spec, two[1], two[0])


# --- MIG -------------------------------------------------------------------------------------

@pytest.fixture
def mig(tmp_path, monkeypatch):
    """GPU 0 (minor 1) has GPU instances 1 (CIs 0, 1) and 2 (CI 0); NVML is absent."""
    host = make_proc(tmp_path, [("0000:07:00.0", 0, UUID_B), ("0000:06:00.0", 1, UUID_A)])
    add_mig(tmp_path, 1, 1, [0, 1])
    add_mig(tmp_path, 1, 2, [0])

    def no_nvml(gpus):
        raise ImportError("no NVML here")
    monkeypatch.setattr(S, "nvml_mig_uuids", no_nvml)
    return host, G.enumerate_gpus(host)


def mig_minor(gpu_minor, gi, ci=None):
    base = 3 + gpu_minor * 15 * 9 + gi * 9
    return base if ci is None else base + 1 + ci


def test_enumerate_migs(mig):
    host, gpus = mig
    got = G.enumerate_migs(host, gpus[0])
    assert [(m.gi, m.ci, m.cap_minors, m.uuid) for m in got] == [
        (1, 0, (mig_minor(1, 1), mig_minor(1, 1, 0)), None),
        (1, 1, (mig_minor(1, 1), mig_minor(1, 1, 1)), None),
        (2, 0, (mig_minor(1, 2), mig_minor(1, 2, 0)), None)]
    assert G.enumerate_migs(host, gpus[1]) == ()


def test_mig_minors_from_access_files(tmp_path):
    host = make_proc(tmp_path, [("0000:06:00.0", 0, UUID_A)])
    add_mig(tmp_path, 0, 3, [2], with_minors_file=False)
    [m] = G.enumerate_migs(host, G.enumerate_gpus(host)[0])
    assert m.cap_minors == (mig_minor(0, 3), mig_minor(0, 3, 2))


def test_select_mig_by_index(mig):
    host, gpus = mig
    sel = S.select_gpus("0:1", gpus, host)
    assert sel.mode == "devices"
    assert uuids(sel) == [UUID_A]                               # the parent's node too
    [m] = sel.migs
    assert (m.gpu, m.gi, m.ci, m.uuid) == (gpus[0], 1, 1, None)
    assert m.cap_minors == (mig_minor(1, 1), mig_minor(1, 1, 1))
    assert sel.visible_devices == f"MIG-{UUID_A}/1/1"


def test_select_mig_with_nvml_uuid(mig, monkeypatch):
    host, gpus = mig
    calls = []

    def fake_nvml(gpus_):
        calls.append(1)
        return {(UUID_A.lower(), 2, 0): "MIG-11111111-2222-3333-4444-555555555555"}
    monkeypatch.setattr(S, "nvml_mig_uuids", fake_nvml)
    sel = S.select_gpus("0:2,1,0:0", gpus, host)
    assert uuids(sel) == [UUID_A, UUID_B]
    assert [(m.gi, m.ci, m.uuid) for m in sel.migs] == [
        (2, 0, "MIG-11111111-2222-3333-4444-555555555555"), (1, 0, None)]
    assert calls == [1]                                         # NVML asked once
    sel = S.select_gpus("MIG-11111111-2222-3333-4444-555555555555", gpus, host)
    [m] = sel.migs
    assert (m.gpu, m.gi, m.ci) == (gpus[0], 2, 0)
    assert m.cap_minors == (mig_minor(1, 2), mig_minor(1, 2, 0))
    with pytest.raises(SelectionError, match="MIG-99"):
        S.select_gpus("MIG-99999999-2222-3333-4444-555555555555", gpus, host)


def test_select_mig_old_uuid_form_needs_no_nvml(mig):
    host, gpus = mig
    sel = S.select_gpus(f"MIG-{UUID_A}/2/0", gpus, host)
    [m] = sel.migs
    assert (m.gpu, m.gi, m.ci, m.uuid) == (gpus[0], 2, 0, f"MIG-{UUID_A}/2/0")
    with pytest.raises(SelectionError, match="no\\s+GPU instance 5"):
        S.select_gpus(f"MIG-{UUID_A}/5/0", gpus, host)


def test_mig_uuid_without_nvml_is_an_error(mig):
    host, gpus = mig
    with pytest.raises(SelectionError) as exc:
        S.select_gpus("MIG-11111111-2222-3333-4444-555555555555", gpus, host)
    assert "MIG-11111111-2222-3333-4444-555555555555" in str(exc.value)
    assert "NVML" in str(exc.value)


def test_mig_dedupe_and_parent(mig):
    host, gpus = mig
    sel = S.select_gpus("0:0,0:0,0", gpus, host)
    assert len(sel.migs) == 1 and uuids(sel) == [UUID_A]


@pytest.mark.parametrize("spec, words", [
    ("0:3", ["'0:3'", "has 3"]),
    ("1:0", ["'1:0'", "MIG is off"]),
    ("5:0", ["'5:0'", "no GPU with index 5"]),
])
def test_mig_errors(mig, spec, words):
    host, gpus = mig
    with pytest.raises(SelectionError) as exc:
        S.select_gpus(spec, gpus, host)
    for w in words:
        assert w in str(exc.value)


def test_mig_needs_host(mig):
    with pytest.raises(SelectionError, match="'0:0'"):
        S.select_gpus("0:0", mig[1], None)


def test_all_includes_mig_devices(mig):
    host, gpus = mig
    sel = S.select_gpus("all", gpus, host)
    assert sel.gpus == gpus
    assert [(m.gpu.index, m.gi, m.ci) for m in sel.migs] == [(0, 1, 0), (0, 1, 1), (0, 2, 0)]
