"""DeviceRule rendering and the eBPF device-filter assembler, without a kernel.

Two checks in the manner of runc's devicefilter_test.go and youki's program.rs: a golden
disassembly, and the interpreter in nvlaunch.plan.bpf run over a type x major x minor x
access grid against a plain-Python statement of the rules ("first match decides").
"""
import itertools
import struct
from types import SimpleNamespace

import pytest

from nvlaunch.plan import bpf
from nvlaunch.core.consts import (
    BPF_DEVCG_ACC_MKNOD as M, BPF_DEVCG_ACC_READ as R, BPF_DEVCG_ACC_WRITE as W,
    BPF_DEVCG_DEV_BLOCK as BLK, BPF_DEVCG_DEV_CHAR as CHR,
)
from nvlaunch.plan.devices import DeviceRule, access_mask, parse_v1_line, rules_for_nodes

ALLOW, DENY = 1, 0


# ---- devices.py -------------------------------------------------------------------

def test_v1_lines():
    assert DeviceRule("c", 195, 0, "rw").to_v1_line() == "c 195:0 rw"
    assert DeviceRule("c", 195, None, "rwm").to_v1_line() == "c 195:* rwm"
    assert DeviceRule("b", None, None, "m").to_v1_line() == "b *:* m"
    assert DeviceRule("a", None, None, "rwm").to_v1_line() == "a *:* rwm"
    # access is printed in the kernel's order whatever order it was given in
    assert DeviceRule("c", 1, 3, "wr").to_v1_line() == "c 1:3 rw"
    assert DeviceRule("c", 1, 3, "r", allow=False).to_v1_line() == "c 1:3 r"


@pytest.mark.parametrize("args", [
    ("x", 1, 3, "rw"), ("c", 1, 3, ""), ("c", 1, 3, "rx"), ("c", -1, 3, "r"),
    ("c", 4096, 0, "r"), ("c", 1, 1 << 20, "r"),
])
def test_bad_rules(args):
    with pytest.raises(ValueError):
        DeviceRule(*args)


def test_parse_v1_line_round_trip():
    for line in ("c 195:0 rw", "c 136:* rwm", "b *:* m", "a *:* rwm"):
        assert parse_v1_line(line).to_v1_line() == line
    assert parse_v1_line("a") == DeviceRule("a", None, None, "rwm")
    with pytest.raises(ValueError):
        parse_v1_line("c 195 rw")


def test_rules_for_nodes_dedup_keeps_order():
    nodes = [SimpleNamespace(major=195, minor=255, path="/dev/nvidiactl"),
             SimpleNamespace(major=195, minor=0, path="/dev/nvidia0"),
             SimpleNamespace(major=195, minor=255, path="/dev/nvidiactl"),
             SimpleNamespace(major=511, minor=0, path="/dev/nvidia-uvm")]
    assert rules_for_nodes(nodes) == (
        DeviceRule("c", 195, 255, "rw"),
        DeviceRule("c", 195, 0, "rw"),
        DeviceRule("c", 511, 0, "rw"),
    )
    assert rules_for_nodes([]) == ()


# ---- golden disassembly -----------------------------------------------------------

GOLDEN_RULES = (
    DeviceRule("c", 1, 3, "rwm"),                 # /dev/null: no access compare
    DeviceRule("c", 195, None, "rw"),             # every NVIDIA minor, rw only
    DeviceRule("b", None, None, "m"),             # mknod of any block device
    DeviceRule("c", 10, 200, "rwm", allow=False), # /dev/net/tun denied
)

GOLDEN = """\
0: (61) r2 = *(u32 *)(r1 +0)
1: (54) w2 &= 65535
2: (61) r3 = *(u32 *)(r1 +0)
3: (74) w3 >>= 16
4: (61) r4 = *(u32 *)(r1 +4)
5: (61) r5 = *(u32 *)(r1 +8)
6: (55) if r2 != 0x2 goto pc+4
7: (55) if r4 != 0x1 goto pc+3
8: (55) if r5 != 0x3 goto pc+2
9: (b4) w0 = 1
10: (95) exit
11: (55) if r2 != 0x2 goto pc+4
12: (45) if r3 & 0xfff9 goto pc+3
13: (55) if r4 != 0xc3 goto pc+2
14: (b4) w0 = 1
15: (95) exit
16: (55) if r2 != 0x1 goto pc+3
17: (45) if r3 & 0xfffe goto pc+2
18: (b4) w0 = 1
19: (95) exit
20: (55) if r2 != 0x2 goto pc+4
21: (55) if r4 != 0xa goto pc+3
22: (55) if r5 != 0xc8 goto pc+2
23: (b4) w0 = 0
24: (95) exit
25: (b4) w0 = 0
26: (95) exit"""


def test_golden_disassembly():
    prog = bpf.compile_rules(GOLDEN_RULES)
    assert len(prog) == 27 * 8
    assert bpf.disasm(prog) == GOLDEN


GOLDEN_PREPEND = """\
0: (61) r2 = *(u32 *)(r1 +0)
1: (54) w2 &= 65535
2: (61) r3 = *(u32 *)(r1 +0)
3: (74) w3 >>= 16
4: (61) r4 = *(u32 *)(r1 +4)
5: (61) r5 = *(u32 *)(r1 +8)
6: (55) if r2 != 0x2 goto pc+5
7: (45) if r3 & 0xfff9 goto pc+4
8: (55) if r4 != 0xc3 goto pc+3
9: (55) if r5 != 0x0 goto pc+2
10: (b4) w0 = 1
11: (95) exit
12: (b4) w0 = 0
13: (95) exit"""


def test_golden_prepend_falls_through_into_old_code():
    old = bpf.compile_rules([], default_allow=False)[len(bpf.PROLOGUE) * 8:]  # w0 = 0; exit
    prog = bpf.prepend_rules([DeviceRule("c", 195, 0, "rw")], old)
    assert bpf.disasm(prog) == GOLDEN_PREPEND
    assert prog.endswith(old)


def test_encoding_is_little_endian_bpf_insn():
    # struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm}
    assert bpf.insn(0x55, dst=4, off=3, imm=195) == bytes([0x55, 0x04, 3, 0, 195, 0, 0, 0])
    assert bpf.insn(0xbc, dst=1, src=3) == bytes([0xbc, 0x31, 0, 0, 0, 0, 0, 0])
    assert bpf.insn(0x45, dst=3, imm=0xfffffff9)[4:] == struct.pack("<i", -7)


# ---- interpreter over a grid ------------------------------------------------------

TYPES = {"c": CHR, "b": BLK}
ACCESSES = [a for a in range(1, 8)]             # every non-empty subset of r|w|m
MAJORS = (1, 5, 136, 195, 8)
MINORS = (0, 1, 3, 5, 255)


def expected(rules, default_allow, dev_type, access, major, minor):
    """The rules' meaning, stated plainly: the first rule that matches decides."""
    for rule in rules:
        if rule.type != "a" and TYPES[rule.type] != dev_type:
            continue
        if access & ~access_mask(rule.access):
            continue
        if rule.major is not None and rule.major != major:
            continue
        if rule.minor is not None and rule.minor != minor:
            continue
        return ALLOW if rule.allow else DENY
    return ALLOW if default_allow else DENY


def grid():
    return itertools.product(TYPES.values(), ACCESSES, MAJORS, MINORS)


@pytest.mark.parametrize("default_allow", [False, True])
def test_compile_rules_grid(default_allow):
    prog = bpf.compile_rules(GOLDEN_RULES, default_allow=default_allow)
    for point in grid():
        assert bpf.run(prog, *point) == expected(GOLDEN_RULES, default_allow, *point), point


def test_unconditional_rule_ends_the_program():
    # The verifier rejects unreachable code, so nothing follows a rule matching all.
    prog = bpf.compile_rules([DeviceRule("c", 1, 3, "r", allow=False),
                              DeviceRule("a", None, None, "rwm"),
                              DeviceRule("c", 195, 0, "rw", allow=False)])
    assert bpf.disasm(prog).splitlines()[-2:] == ["12: (b4) w0 = 1", "13: (95) exit"]
    assert bpf.run(prog, CHR, R, 1, 3) == DENY
    assert bpf.run(prog, CHR, R, 195, 0) == ALLOW


# A device filter as runc's devicefilter.go emits it, assembled instruction by instruction
# (cilium/ebpf asm names in the comments).  Unlike ours, its access check uses r1 as
# scratch and a register compare, so it also exercises those opcodes in the interpreter.
RUNTIME_RULES = (
    DeviceRule("c", 1, 3, "rwm"),                 # /dev/null
    DeviceRule("c", 1, 5, "rwm"),                 # /dev/zero
    DeviceRule("c", 136, None, "rwm"),            # /dev/pts/*
    DeviceRule("c", 195, 1, "rwm", allow=False),  # a GPU explicitly denied
    DeviceRule("c", 195, None, "r"),              # every other GPU read-only
)


def runc_program(rules):
    out = [bytes(i) for i in bpf.PROLOGUE]          # same prologue as runc
    for rule in rules:
        checks = []   # (kind, ...) to turn into jumps to the next block
        if rule.type != "a":
            checks.append([bpf.insn(0x55, dst=2, imm=TYPES[rule.type])])    # JNE.Imm(R2)
        if access_mask(rule.access) != 7:
            checks.append([bpf.insn(0xbc, dst=1, src=3),                     # Mov.Reg32(R1, R3)
                           bpf.insn(0x54, dst=1, imm=access_mask(rule.access)),  # And.Imm32
                           bpf.insn(0x5d, dst=1, src=3)])                    # JNE.Reg(R1, R3)
        if rule.major is not None:
            checks.append([bpf.insn(0x55, dst=4, imm=rule.major)])          # JNE.Imm(R4)
        if rule.minor is not None:
            checks.append([bpf.insn(0x55, dst=5, imm=rule.minor)])          # JNE.Imm(R5)
        flat = [i for group in checks for i in group]
        size = len(flat) + 2
        block = []
        for pc, raw in enumerate(flat):
            if raw[0] in (0x55, 0x5d):     # patch the jump to the end of the block
                raw = raw[:2] + struct.pack("<h", size - pc - 1) + raw[4:]
            block.append(raw)
        block += [bpf.insn(0xb4, dst=0, imm=int(rule.allow)), bpf.insn(0x95)]
        out += block
    out += [bpf.insn(0xb4, dst=0, imm=0), bpf.insn(0x95)]   # default deny
    return b"".join(out)


def test_runc_shaped_program_means_its_rules():
    prog = runc_program(RUNTIME_RULES)
    for point in grid():
        assert bpf.run(prog, *point) == expected(RUNTIME_RULES, False, *point), point


@pytest.mark.parametrize("make_old", [runc_program,
                                      lambda rules: bpf.compile_rules(rules)],
                         ids=["runc-shaped", "ours"])
def test_prepend_keeps_runtime_rules(make_old):
    old = make_old(RUNTIME_RULES)
    ours = (DeviceRule("c", 195, 0, "rw"),)
    prog = bpf.prepend_rules(ours, old)
    assert prog.endswith(old)          # appended intact

    # The cases the hook relies on, by name ...
    assert bpf.run(prog, CHR, R | W, 195, 0) == ALLOW          # the GPU we add
    assert bpf.run(prog, CHR, R, 195, 0) == ALLOW
    assert bpf.run(prog, CHR, R | W, 195, 1) == DENY           # runtime's deny holds
    assert bpf.run(prog, CHR, R, 195, 1) == DENY
    assert bpf.run(prog, CHR, R | W | M, 1, 3) == ALLOW        # /dev/null still works
    assert bpf.run(prog, CHR, M, 195, 0) == DENY               # no mknod from us
    assert bpf.run(prog, CHR, R | W, 195, 5) == DENY           # runtime: read only
    assert bpf.run(prog, CHR, R, 195, 5) == ALLOW
    assert bpf.run(prog, BLK, R, 195, 0) == DENY               # type matters
    # ... and everywhere: our rules first, then exactly the runtime's.
    for point in grid():
        assert bpf.run(prog, *point) == expected(ours + RUNTIME_RULES, False, *point), point

    # Naming the denied GPU explicitly is what opens it.
    prog2 = bpf.prepend_rules(ours + (DeviceRule("c", 195, 1, "rw"),), old)
    assert bpf.run(prog2, CHR, R | W, 195, 1) == ALLOW
    assert bpf.run(prog2, CHR, M, 195, 1) == DENY


def test_prepend_nothing_is_identity_and_everything_drops_old_code():
    old = runc_program(RUNTIME_RULES)
    assert bpf.prepend_rules([], old) == old
    prog = bpf.prepend_rules([DeviceRule("a", None, None, "rwm")], old)
    assert not prog.endswith(old)
    assert bpf.run(prog, CHR, R | W | M, 195, 1) == ALLOW


def test_prefix_leaves_r1_for_the_old_program():
    # An old program that loads through r1 only at its end: a prefix that had
    # clobbered r1 would make this load fail in the interpreter (and the verifier).
    old = bpf.insn(0x61, dst=6, src=1, off=4) + bpf.insn(0xb4, dst=0, imm=0) + bpf.insn(0x95)
    prog = bpf.prepend_rules([DeviceRule("c", 195, 0, "rw")], old)
    assert bpf.run(prog, CHR, R, 1, 3) == DENY
    clobber = bpf.insn(0xb4, dst=1, imm=0) + old
    with pytest.raises(bpf.BpfRunError, match="not the ctx"):
        bpf.run(clobber, CHR, R, 1, 3)


def test_interpreter_refuses_what_it_does_not_model():
    with pytest.raises(bpf.BpfRunError, match="unsupported"):
        bpf.run(bpf.insn(0xb4, dst=0, imm=1) + bpf.insn(0x85, imm=14) + bpf.insn(0x95),
                CHR, R, 1, 3)   # call helper 14
    with pytest.raises(bpf.BpfRunError, match="read before"):
        bpf.run(bpf.insn(0x95), CHR, R, 1, 3)                     # r0 never set
    with pytest.raises(bpf.BpfRunError, match="outside"):
        bpf.run(bpf.insn(0xb4, dst=0, imm=1), CHR, R, 1, 3)       # runs off the end
    with pytest.raises(bpf.BpfRunError, match="out of bounds"):
        bpf.run(bpf.insn(0x61, dst=2, src=1, off=12), CHR, R, 1, 3)


@pytest.mark.parametrize("old, why", [
    (b"", "no instructions"),
    (bytes(8) + bpf.insn(0x95), "empty instruction"),
    (bpf.insn(0x85, imm=14) + bpf.insn(0x95), "calls a helper"),
    (bpf.insn(0x18, dst=1, src=1, imm=3) + bytes(8) + bpf.insn(0x95), "map reference"),
    (bpf.insn(0xb4, dst=0, imm=1), "does not end"),
    (b"\x95" * 5, "multiple of 8"),
])
def test_prepend_refuses_programs_it_cannot_reload(old, why):
    with pytest.raises(ValueError, match=why):
        bpf.prepend_rules([DeviceRule("c", 195, 0, "rw")], old)
