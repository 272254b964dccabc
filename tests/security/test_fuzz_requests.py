"""Property tests of the request-side parsers: whatever text a user, an image or a runtime
hands them, they answer or raise one of nvlaunch's own errors (NvlaunchError), never
another exception (which the CLI could only print as "internal error").

    GPU selection        plan.selection.select_gpus      --gpus, NVIDIA_VISIBLE_DEVICES
    capabilities         plan.capabilities               --capabilities, NVIDIA_DRIVER_CAPABILITIES
    requirements         plan.require                    NVIDIA_REQUIRE_*, CUDA_VERSION
    options              core.argv                       every command's option table
    the error line       core.errors                     one printable line, whatever the text

Text comes from two sources: any Unicode (surrogate escapes of undecodable bytes, other
scripts' digits, superscripts, control characters included), and a small grammar of the
syntax each parser reads, so that the examples reach past the first check.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvlaunch.core import errors as E
from nvlaunch.core.argv import ID_MAX, ascii_int, int_opt, parse_command, parse_opts
from nvlaunch.host.driver_files import ALL_CAPABILITIES, CAPABILITIES
from nvlaunch.host.gpus import Gpu
from nvlaunch.host.view import HostView
from nvlaunch.plan import require
from nvlaunch.plan.capabilities import devices_for, parse_capabilities
from nvlaunch.plan.request import Request
from nvlaunch.plan.selection import MODE_DEVICES, select_gpus

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

GPUS = (Gpu(0, 1, "GPU-622a2ddb-860d-1305-7da7-b06111d0811c", "0000:06:00.0", "NVIDIA H200"),
        Gpu(1, 0, "GPU-4fd7b0ab-201e-0469-8096-16f18b2d0d90", "0000:07:00.0", "NVIDIA H200"))

# Any text, the surrogate escapes an undecodable argv byte becomes included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60) | st.text(
    st.sampled_from("0123456789١٢²³０１:.,-/ \t\n\x00\x1b\udcff\udc80GPUMIGabcdef"), max_size=40)
DIGITS = st.sampled_from(["0", "1", "7", "00", "١", "²", "０", "9" * 30, "9" * 5000, "-1", "+1", ""])


def _join(parts) -> str:
    return ",".join(parts)


# ---- GPU selection ----------------------------------------------------------------------------

GPU_ITEM = st.one_of(
    DIGITS,
    st.sampled_from(["all", "none", "void", "ALL", " all ", "GPU-", "GPU-622a", "gpu-4fd7",
                     "GPU-622a2ddb-860d-1305-7da7-b06111d0811c", "MIG-", "MIG-GPU-622a2ddb/1/0",
                     "0000:06:00.0", "06:00.0", "00000000:07:00.0", "0000:06:00.8", "zz:06:00.0"]),
    st.builds(lambda g, m: f"{g}:{m}", DIGITS, DIGITS),
    st.builds(lambda u, g, c: f"MIG-{u}/{g}/{c}",
              st.sampled_from([GPUS[0].uuid, GPUS[1].uuid, "GPU-zz", ""]), DIGITS, DIGITS),
    st.builds(lambda a, b, c, d: f"{a}:{b}:{c}.{d}", st.text("0123456789abcdefABCDEF\u0660", max_size=9),
              st.text("0123456789abcdef", max_size=3), st.text("0123456789abcdef", max_size=3),
              st.text("0123456789", max_size=2)),
    ANY_TEXT,
)
GPU_SPEC = ANY_TEXT | st.lists(GPU_ITEM, max_size=5).map(_join)


@SETTINGS
@given(spec=GPU_SPEC | st.none())
def test_gpu_selection_raises_only_nvlaunch_errors(spec):
    try:
        sel = select_gpus(spec, GPUS)
    except E.NvlaunchError as err:
        assert isinstance(err, E.SelectionError), repr(err)
        return
    # An answer selects GPUs of the host only, each once, and names them by UUID.
    assert all(g in GPUS for g in sel.gpus) and len(set(sel.gpus)) == len(sel.gpus)
    if sel.mode == MODE_DEVICES:
        assert set(sel.visible_devices.split(",")) - {""} <= {g.uuid for g in GPUS}
    else:
        assert sel.gpus == () and sel.visible_devices == sel.mode


@pytest.fixture(scope="module")
def empty_host(tmp_path_factory):
    """A host tree without a driver: what MIG lookups read finds nothing there."""
    root = str(tmp_path_factory.mktemp("nohost"))
    os.makedirs(os.path.join(root, "proc/driver/nvidia/capabilities"))
    return HostView(root, root, root)


@SETTINGS
@given(spec=st.lists(GPU_ITEM, min_size=1, max_size=3).map(_join))
def test_gpu_selection_with_a_host_raises_only_nvlaunch_errors(spec, empty_host):
    try:
        select_gpus(spec, GPUS, empty_host)
    except E.NvlaunchError:
        pass


@SETTINGS
@given(n=st.integers(min_value=0, max_value=10 ** 30), pad=st.integers(0, 3))
def test_an_index_selects_that_gpu_or_names_itself(n, pad):
    item = "0" * pad + str(n)
    if n < len(GPUS):
        assert select_gpus(item, GPUS).gpus == (GPUS[n],)
    else:
        with pytest.raises(E.SelectionError, match=f"'{item}'"):
            select_gpus(item, GPUS)


@SETTINGS
@given(digit=st.characters(categories=["Nd", "No"]).filter(lambda c: not c.isascii()))
def test_only_ascii_digits_are_indices(digit):
    """"١" and "²" pass str.isdigit() (and "١" int()); neither is a GPU index."""
    for spec in (digit, f"0:{digit}", f"{digit}:0"):
        with pytest.raises(E.SelectionError):
            select_gpus(spec, GPUS)


# ---- capabilities ------------------------------------------------------------------------------

CAP_WORD = st.sampled_from(sorted(CAPABILITIES) + ["all", "ALL", "Compute", " video ", "", "none",
                                                   "compute\x00", "utilit\u0443"]) | ANY_TEXT


@SETTINGS
@given(text=ANY_TEXT | st.lists(CAP_WORD, max_size=6).map(_join) | st.none())
def test_capabilities_raise_only_usage_errors(text):
    try:
        caps = parse_capabilities(text)
    except E.NvlaunchError as err:
        assert isinstance(err, E.UsageError), repr(err)
        assert "\n" not in E.describe(err)[1]
        return
    assert caps and caps <= ALL_CAPABILITIES
    names = {n.strip() for n in (text or "").split(",")} - {""}
    assert names <= set(CAPABILITIES) | {"all"}
    assert devices_for(caps)[0] == ("/dev/nvidiactl", True)


# ---- NVIDIA_REQUIRE_* ---------------------------------------------------------------------------

VERSION = st.one_of(DIGITS, st.lists(DIGITS, min_size=1, max_size=4).map(".".join), ANY_TEXT)
CONDITION = st.builds(lambda k, op, v: f"{k}{op}{v}",
                      st.sampled_from(list(require.KEYS) + ["CUDA", "foo", "", "brand ", "arch\t"]),
                      st.sampled_from(list(require.OPS) + ["=>", "==", "", "~"]), VERSION)
EXPRESSION = ANY_TEXT | st.lists(st.lists(CONDITION | ANY_TEXT, min_size=1, max_size=3).map(_join),
                                 max_size=3).map(" ".join)


@SETTINGS
@given(text=EXPRESSION)
def test_require_expressions_raise_only_requirement_errors(text):
    try:
        terms = require.parse_expression(text, "NVIDIA_REQUIRE_X")
    except E.NvlaunchError as err:
        assert isinstance(err, E.RequirementError), repr(err)
        return
    for conds in terms:
        assert conds and all(c.key in require.KEYS and c.op in require.OPS for c in conds)


@SETTINGS
@given(env=st.dictionaries(st.sampled_from(["NVIDIA_REQUIRE_CUDA", "NVIDIA_REQUIRE_X", "CUDA_VERSION",
                                            "NVIDIA_DISABLE_REQUIRE", "NVIDIA_REQUIRE_JETPACK"]),
                           EXPRESSION | VERSION, max_size=4),
       cuda=st.none() | st.integers(-1, 10 ** 6), driver=st.sampled_from(["580.159.04", "", "x", "٥٨٠"]),
       gpus=st.lists(st.fixed_dictionaries({}, optional={"arch": VERSION, "brand": ANY_TEXT}), max_size=2))
def test_require_check_raises_only_requirement_errors(env, cuda, driver, gpus):
    try:
        require.check(env, driver, lambda: cuda, gpus)
    except E.NvlaunchError as err:
        assert isinstance(err, E.RequirementError), repr(err)


@SETTINGS
@given(a=st.lists(st.integers(0, 10 ** 25), min_size=1, max_size=4),
       b=st.lists(st.integers(0, 10 ** 25), min_size=1, max_size=4), zeros=st.integers(0, 2))
def test_versions_compare_as_numbers(a, b, zeros):
    """driver>=V holds exactly where the versions, as numbers field by field (trailing .0
    ignored), compare so: leading zeros and long fields included."""
    def norm(v):
        v = list(v)
        while len(v) > 1 and v[-1] == 0:
            v.pop()
        return tuple(v)
    host = ".".join("0" * zeros + str(x) for x in a)
    want = ".".join(str(x) for x in b)
    env = {"NVIDIA_REQUIRE_DRIVER": f"driver>={want}"}
    if norm(a) >= norm(b):
        require.check(env, host, None)
    else:
        with pytest.raises(E.RequirementError, match="unsatisfied condition"):
            require.check(env, host, None)


# ---- option tables -----------------------------------------------------------------------------

TABLE = {"--gpus": ("gpus", True, False), "--env": ("env", True, True), "-e": ("env", True, True),
         "--json": ("json", False, False), "--help": ("help", False, False)}
ARG = st.sampled_from(list(TABLE) + ["--", "-", "--gpus=", "--json=1", "--env=A=B", "--x", "-x", "ROOT",
                                     "--\udcff", "--gpus=\udcff"]) | ANY_TEXT


@SETTINGS
@given(args=st.lists(ARG, max_size=8), stop=st.booleans())
def test_parse_opts_raises_only_usage_errors(args, stop):
    try:
        opts, rest = parse_opts(list(args), TABLE, "cmd", stop_at_positional=stop)
    except E.NvlaunchError as err:
        assert isinstance(err, E.UsageError), repr(err)
        return
    assert set(opts) <= {"gpus", "env", "json", "help", "_positional"}
    assert all(isinstance(v, list) for k, v in opts.items() if k in ("env", "_positional"))
    assert rest == args[len(args) - len(rest):]


@SETTINGS
@given(args=st.lists(ARG, max_size=6))
def test_parse_command_raises_only_usage_errors(args):
    table = {k: v for k, v in TABLE.items() if k != "--help"}     # no usage printed
    try:
        parsed = parse_command(list(args), table, "cmd", "usage\n", max_positional=1)
    except E.NvlaunchError as err:
        assert isinstance(err, E.UsageError), repr(err)
        return
    assert parsed is not None and len(parsed[1]) <= 1


@SETTINGS
@given(text=ANY_TEXT | DIGITS | st.integers(0, 2 ** 40).map(str))
def test_ids_are_ascii_numbers_in_range(text):
    got = ascii_int(text, ID_MAX)
    if text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 10 and int(text) <= ID_MAX:
        assert got == int(text)
        assert int_opt({"uid": text}, "uid", "--uid") == got
    else:
        assert got is None
        with pytest.raises(E.UsageError, match="^--uid "):
            int_opt({"uid": text}, "uid", "--uid")


# ---- the error line ---------------------------------------------------------------------------

@SETTINGS
@given(text=ANY_TEXT | st.text(max_size=300))
def test_every_message_becomes_one_printable_line(text):
    for exc in (E.UsageError(text), E.SelectionError(text, hint=text), OSError(2, text, text),
                RuntimeError(text)):
        _, line = E.describe(exc)
        assert line.isprintable() and len(line.splitlines()) <= 1, repr(line)
        line.encode("utf-8")                      # no lone surrogate is left to fail on
    quoted = E.quote(text)
    assert quoted.isprintable() and quoted.startswith("'")
    assert len(quoted) <= 4 * 200 + 40           # cut: a megabyte of input is not a megabyte line


@SETTINGS
@given(env=st.dictionaries(st.sampled_from(["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                                            "NVIDIA_REQUIRE_CUDA", "NVIDIA_\udcff", "PATH"]) | ANY_TEXT,
                           GPU_SPEC, max_size=5))
def test_a_request_from_any_environment(env):
    """The hooks' path: a container's variables -> Request -> selection, capabilities and
    requirements; NvlaunchError or an answer, for whatever the image set."""
    req = Request.from_env(env)
    assert all(k.startswith("NVIDIA_") for k, _ in req.env)
    assert req.void == (req.gpus is None or req.gpus.strip() in ("", "void"))
    try:
        select_gpus(req.gpus, GPUS)
        parse_capabilities(req.capabilities)
        require.check(dict(req.env), "580.159.04", lambda: 13000)
    except E.NvlaunchError:
        pass
