"""A pure-Python eBPF assembler for cgroup-v2 device filters, a disassembler and an interpreter.

Why eBPF at all
    cgroup v2 has no devices.allow/devices.deny files.  Its device policy is an eBPF
    program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup directory with
    attach type BPF_CGROUP_DEVICE (Documentation/admin-guide/cgroup-v2.rst, "Device
    controller").  On every open(2) or mknod(2) of a device node the kernel runs it with a
    `struct bpf_cgroup_dev_ctx` (include/uapi/linux/bpf.h):

        u32 access_type;   low 16 bits: BPF_DEVCG_DEV_BLOCK/CHAR, high 16: BPF_DEVCG_ACC_*
        u32 major;
        u32 minor;

    and the program returns 1 (allow) or 0 (deny -> EPERM).

Program shape (compile_rules)
    The same shape as runc's devicefilter.go and crun's ebpf.c, so a reader who knows
    either can read ours and the interpreter below runs theirs:

        prologue   r2 = type, r3 = access, r4 = major, r5 = minor   (loaded from r1 = ctx)
        block 1    if type/access/major/minor do not match: goto block 2
                   r0 = allow_1; exit
        block 2    ...
        default    r0 = default_allow; exit

    First match decides.  A wildcard (type 'a', major/minor None, access "rwm") emits no
    compare at all.  The access check is one BPF_JSET, "if access & ~rule_access goto
    next", i.e. the rule matches when the requested access is a subset of the rule's.
    Unlike runc and crun (which use r1 as scratch for that check) the blocks write no
    register but r0, and never r1: prepend_rules() depends on that.

Why prepend + BPF_F_REPLACE (prepend_rules)
    With BPF_F_ALLOW_MULTI the kernel runs every device program attached to the cgroup
    and to its ancestors and grants access only if *all* of them return 1
    (__cgroup_bpf_check_dev_permission() -> bpf_prog_run_array_cg() in
    kernel/bpf/cgroup.c).  So attaching a second program of our own can only narrow
    access, never widen it.  To let a container open a GPU the runtime did not list, the
    runtime's own program has to change.  Like libnvidia-container (nvcgo ebpf.go), we
    read the attached program's instructions back from the kernel (BPF_OBJ_GET_INFO_BY_FD,
    xlated_prog_insns), put our allow blocks in front, and append the old code unchanged:
    every jump in it is relative, so it stays valid, and it loads its own registers from
    r1, which our prefix leaves intact.  A device none of our rules matches falls through
    into the runtime's program and gets exactly the answer it got before, so a device the
    runtime denied stays denied unless we name it.  cgroup.py then swaps the new program
    for the old one with BPF_F_REPLACE (Linux 5.6), which replaces the entry in the
    cgroup's program list in place (__cgroup_bpf_attach(), `replace_prog`): there is no
    moment with neither program (everything allowed) or both.

Pure: stdlib, consts and devices only; nothing here talks to a kernel.
"""
from __future__ import annotations

import struct
from nvlaunch.core.records import record

from nvlaunch.plan.devices import ALL_ACCESS, DEV_TYPES, DeviceRule, access_mask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Instruction classes, sizes, modes and operations (include/uapi/linux/bpf_common.h, bpf.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = range(8)
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_MEM = 0x00, 0x60
BPF_K, BPF_X = 0x00, 0x08
BPF_ADD, BPF_SUB, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_XOR, BPF_MOV = (
    0x00, 0x10, 0x40, 0x50, 0x60, 0x70, 0xa0, 0xb0)
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE, BPF_CALL, BPF_EXIT, BPF_JLT, BPF_JLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x80, 0x90, 0xa0, 0xb0)

# Names as the kernel's verifier log prints them (kernel/bpf/disasm.c bpf_alu_string[],
# bpf_jmp_string[]), so our disassembly reads like `bpftool prog dump xlated`.
ALU_OPS = {BPF_ADD: "+=", 0x10: "-=", 0x20: "*=", 0x30: "/=", BPF_OR: "|=", BPF_AND: "&=",
           BPF_LSH: "<<=", BPF_RSH: ">>=", 0x80: "neg", 0x90: "%=", BPF_XOR: "^=",
           BPF_MOV: "=", 0xc0: "s>>="}
JMP_OPS = {BPF_JA: "jmp", BPF_JEQ: "==", BPF_JGT: ">", BPF_JGE: ">=", BPF_JSET: "&",
           BPF_JNE: "!=", 0x60: "s>", 0x70: "s>=", BPF_CALL: "call", BPF_EXIT: "exit",
           BPF_JLT: "<", BPF_JLE: "<=", 0xc0: "s<", 0xd0: "s<="}
SIZES = {BPF_W: ("u32", 4), BPF_H: ("u16", 2), BPF_B: ("u8", 1), BPF_DW: ("u64", 8)}

R0, R1, R2, R3, R4, R5 = range(6)

# struct bpf_cgroup_dev_ctx field offsets.
CTX_ACCESS_TYPE, CTX_MAJOR, CTX_MINOR = 0, 4, 8
CTX_SIZE = 12

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")   # struct bpf_insn: code, dst:4|src:4, s16 off, s32 imm


@record
class Insn:
    """One decoded instruction (a record, not a namedtuple: `collections` costs a hook
    1.6 ms to import)."""
    code: int
    dst: int
    src: int
    off: int
    imm: int


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One raw 8-byte instruction (little-endian, as on x86-64 and aarch64)."""
    if imm >= 1 << 31:          # unsigned 32-bit constant -> the same bits as s32
        imm -= 1 << 32
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def decode(prog: bytes) -> list[Insn]:
    if len(prog) % INSN_SIZE:
        raise ValueError(f"eBPF program of {len(prog)} bytes: not a multiple of {INSN_SIZE}")
    out = []
    for i in range(0, len(prog), INSN_SIZE):
        code, regs, off, imm = _INSN.unpack_from(prog, i)
        out.append(Insn(code, regs & 0xf, regs >> 4, off, imm))
    return out


# ---- assembler -------------------------------------------------------------------

def ldx_w(dst: int, src: int, off: int) -> bytes:
    return insn(BPF_LDX | BPF_W | BPF_MEM, dst, src, off)


def alu32_imm(op: int, dst: int, imm: int) -> bytes:
    return insn(BPF_ALU | op | BPF_K, dst, imm=imm)


def jmp_imm(op: int, dst: int, imm: int, off: int) -> bytes:
    return insn(BPF_JMP | op | BPF_K, dst, off=off, imm=imm)


def exit_insn() -> bytes:
    return insn(BPF_JMP | BPF_EXIT)


# r2 = type, r3 = access, r4 = major, r5 = minor: the same registers as runc and crun.
PROLOGUE = (
    ldx_w(R2, R1, CTX_ACCESS_TYPE),
    alu32_imm(BPF_AND, R2, 0xffff),
    ldx_w(R3, R1, CTX_ACCESS_TYPE),
    alu32_imm(BPF_RSH, R3, 16),
    ldx_w(R4, R1, CTX_MAJOR),
    ldx_w(R5, R1, CTX_MINOR),
)


def _matches_everything(rule: DeviceRule) -> bool:
    return (rule.type == "a" and rule.major is None and rule.minor is None
            and access_mask(rule.access) == access_mask(ALL_ACCESS))


def rule_block(rule: DeviceRule) -> list[bytes]:
    """Instructions for one rule: compares that skip to the end of the block on mismatch,
    then `r0 = allow; exit`.  Writes r0 only."""
    # (op, register, constant): jump past this block when `register op constant`.
    checks = []
    if rule.type != "a":
        checks.append((BPF_JNE, R2, DEV_TYPES[rule.type]))
    rule_access = access_mask(rule.access)
    if rule_access != access_mask(ALL_ACCESS):
        # Any requested access bit outside the rule's -> not this rule.  The complement
        # covers all 16 access bits, so a future BPF_DEVCG_ACC_* bit is not granted.
        checks.append((BPF_JSET, R3, 0xffff & ~rule_access))
    if rule.major is not None:
        checks.append((BPF_JNE, R4, rule.major))
    if rule.minor is not None:
        checks.append((BPF_JNE, R5, rule.minor))
    size = len(checks) + 2
    block = [jmp_imm(op, reg, imm, size - i - 1) for i, (op, reg, imm) in enumerate(checks)]
    block.append(alu32_imm(BPF_MOV, R0, 1 if rule.allow else 0))
    block.append(exit_insn())
    return block


class DeviceFilter:
    """Builder in the shape of crun's create_dev_bpf() and runc's devicefilter:
    construct (prologue), append_rule() per rule, then finish() or prepend_to()."""

    def __init__(self) -> None:
        self._insns: list[bytes] = list(PROLOGUE)
        self._closed = False    # an unconditional rule was added: the rest is dead code

    def append_rule(self, rule: DeviceRule) -> None:
        # The verifier rejects unreachable instructions (check_cfg() in
        # kernel/bpf/verifier.c: "unreachable insn"), so nothing may follow a rule that
        # matches every device.
        if self._closed:
            return
        self._insns.extend(rule_block(rule))
        self._closed = _matches_everything(rule)

    def finish(self, default_allow: bool = False) -> bytes:
        tail = [] if self._closed else [alu32_imm(BPF_MOV, R0, int(default_allow)), exit_insn()]
        return b"".join(self._insns + tail)

    def prepend_to(self, existing: bytes) -> bytes:
        check_reloadable(existing)
        if self._closed:
            return b"".join(self._insns)
        return b"".join(self._insns) + existing


def compile_rules(rules: Iterable[DeviceRule], default_allow: bool = False) -> bytes:
    """A complete device filter: the rules in order (first match decides), then the default."""
    builder = DeviceFilter()
    for rule in rules:
        builder.append_rule(rule)
    return builder.finish(default_allow)


def prepend_rules(rules: Iterable[DeviceRule], existing: bytes) -> bytes:
    """Our rule blocks, then `existing` (another device program's instructions) unchanged:
    a device none of the rules matches gets the old program's answer."""
    rules = tuple(rules)
    if not rules:
        check_reloadable(existing)
        return existing
    builder = DeviceFilter()
    for rule in rules:
        builder.append_rule(rule)
    return builder.prepend_to(existing)


def check_reloadable(prog: bytes) -> None:
    """Refuse instructions that cannot be loaded again as they are.

    The kernel's xlated dump is the program after verification: helper calls carry
    resolved offsets instead of helper ids and map references carry map ids instead of
    fds (bpf_insn_prepare_dump() in kernel/bpf/syscall.c), and with kernel.kptr_restrict
    the dump may come back zeroed.  Device filters written by runc, crun, systemd and us
    use none of those, so a program that does is not one we know how to extend.
    """
    insns = decode(prog)
    if not insns:
        raise ValueError("existing device program has no instructions")
    skip = False
    for pc, ins in enumerate(insns):
        if skip:                          # second half of a 16-byte ld_imm64
            skip = False
            continue
        if ins.code == BPF_LD | BPF_DW | BPF_IMM:
            if ins.src:
                raise ValueError(f"existing device program uses a map reference at insn {pc}")
            skip = True
            continue
        if ins.code == 0:
            raise ValueError(f"existing device program has an empty instruction at {pc} "
                             "(is the xlated dump hidden by kernel.kptr_restrict?)")
        if ins.code == BPF_JMP | BPF_CALL:
            raise ValueError(f"existing device program calls a helper at insn {pc}")
    last = insns[-1].code
    if last not in (BPF_JMP | BPF_EXIT, BPF_JMP | BPF_JA):
        raise ValueError("existing device program does not end in exit or jump")


# ---- disassembler ----------------------------------------------------------------

def _disasm_one(ins: Insn) -> str:
    cls, op = ins.code & 0x07, ins.code & 0xf0
    if cls in (BPF_ALU, BPF_ALU64):
        reg = "r" if cls == BPF_ALU64 else "w"
        name = ALU_OPS.get(op)
        if name is None:
            return "unknown"
        if op == 0x80:
            return f"{reg}{ins.dst} = -{reg}{ins.dst}"
        if ins.code & BPF_X:
            return f"{reg}{ins.dst} {name} {reg}{ins.src}"
        return f"{reg}{ins.dst} {name} {ins.imm}"
    if cls == BPF_LDX and ins.code & 0xe0 == BPF_MEM:
        size = SIZES[ins.code & 0x18][0]
        return f"r{ins.dst} = *({size} *)(r{ins.src} {ins.off:+d})"
    if cls in (BPF_JMP, BPF_JMP32):
        reg = "r" if cls == BPF_JMP else "w"
        if op == BPF_EXIT:
            return "exit"
        if op == BPF_CALL:
            return f"call {ins.imm}"
        if op == BPF_JA:
            return f"goto pc{ins.off:+d}"
        name = JMP_OPS.get(op)
        if name is None:
            return "unknown"
        rhs = f"{reg}{ins.src}" if ins.code & BPF_X else f"{ins.imm & 0xffffffff:#x}"
        return f"if {reg}{ins.dst} {name} {rhs} goto pc{ins.off:+d}"
    if ins.code == BPF_LD | BPF_DW | BPF_IMM:
        return f"r{ins.dst} = {ins.imm & 0xffffffff:#x} ll (low half)"
    return "unknown"


def disasm(prog: bytes) -> str:
    """One line per instruction, `PC: (opcode) text`, in the verifier log's notation."""
    return "\n".join(f"{pc}: ({ins.code:02x}) {_disasm_one(ins)}"
                     for pc, ins in enumerate(decode(prog)))


# ---- interpreter -----------------------------------------------------------------

class _Ctx:
    """The value of r1 at entry: a pointer to bpf_cgroup_dev_ctx, not a number."""
    def __repr__(self) -> str:
        return "ctx"


_CTX = _Ctx()
_U64, _U32 = (1 << 64) - 1, (1 << 32) - 1


class BpfRunError(Exception):
    """The interpreter met something it does not model (or the program is broken)."""


def run(prog: bytes, dev_type: int, access: int, major: int, minor: int,
        max_steps: int = 100_000) -> int:
    """Evaluate a device program for one request; returns r0 (1 allow, 0 deny).

    Models exactly what device filters use: ldx from ctx, 32/64-bit ALU with
    mov/add/sub/and/or/xor/lsh/rsh, 32/64-bit conditional jumps (eq, ne, gt, ge, lt,
    le, set) on immediates and registers, ja and exit.  Anything else raises
    BpfRunError, as does reading an unset register or loading through a register that
    no longer holds the ctx pointer (what a prefix that clobbered r1 would do).
    """
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    insns = decode(prog)
    regs: list[int | _Ctx | None] = [None] * 11
    regs[R1] = _CTX
    pc = 0

    def scalar(reg: int) -> int:
        val = regs[reg]
        if val is None:
            raise BpfRunError(f"pc {pc}: r{reg} read before it was set")
        if isinstance(val, _Ctx):      # (_CTX, the one instance)
            raise BpfRunError(f"pc {pc}: arithmetic on the ctx pointer in r{reg}")
        return val

    for _ in range(max_steps):
        if not 0 <= pc < len(insns):
            raise BpfRunError(f"pc {pc}: outside the program ({len(insns)} insns)")
        ins = insns[pc]
        cls, op = ins.code & 0x07, ins.code & 0xf0
        if cls in (BPF_ALU, BPF_ALU64):
            is64 = cls == BPF_ALU64
            mask, width = (_U64, 64) if is64 else (_U32, 32)
            # A K operand is the s32 immediate sign-extended to the operation's width.
            rhs = (scalar(ins.src) if ins.code & BPF_X else ins.imm) & mask
            if op == BPF_MOV:
                val = rhs
            else:
                lhs = scalar(ins.dst) & mask
                if op == BPF_ADD:
                    val = lhs + rhs
                elif op == BPF_SUB:
                    val = lhs - rhs
                elif op == BPF_AND:
                    val = lhs & rhs
                elif op == BPF_OR:
                    val = lhs | rhs
                elif op == BPF_XOR:
                    val = lhs ^ rhs
                elif op == BPF_LSH:
                    val = lhs << (rhs % width)
                elif op == BPF_RSH:
                    val = lhs >> (rhs % width)
                else:
                    raise BpfRunError(f"pc {pc}: unsupported ALU opcode {ins.code:#04x}")
            regs[ins.dst] = val & mask   # 32-bit ops zero the upper half
            pc += 1
        elif cls == BPF_LDX and ins.code & 0xe0 == BPF_MEM:
            if regs[ins.src] is not _CTX:
                raise BpfRunError(f"pc {pc}: load through r{ins.src}, which is not the ctx")
            size = SIZES[ins.code & 0x18][1]
            if ins.off < 0 or ins.off + size > CTX_SIZE:
                raise BpfRunError(f"pc {pc}: ctx access at {ins.off} size {size} out of bounds")
            regs[ins.dst] = int.from_bytes(ctx[ins.off:ins.off + size], "little")
            pc += 1
        elif cls in (BPF_JMP, BPF_JMP32):
            if ins.code == BPF_JMP | BPF_EXIT:
                return scalar(R0)
            if ins.code == BPF_JMP | BPF_JA:
                pc += ins.off + 1
                continue
            mask = _U64 if cls == BPF_JMP else _U32
            lhs = scalar(ins.dst) & mask
            rhs = (scalar(ins.src) if ins.code & BPF_X else ins.imm) & mask
            if op == BPF_JEQ:
                taken = lhs == rhs
            elif op == BPF_JNE:
                taken = lhs != rhs
            elif op == BPF_JGT:
                taken = lhs > rhs
            elif op == BPF_JGE:
                taken = lhs >= rhs
            elif op == BPF_JLT:
                taken = lhs < rhs
            elif op == BPF_JLE:
                taken = lhs <= rhs
            elif op == BPF_JSET:
                taken = bool(lhs & rhs)
            else:
                raise BpfRunError(f"pc {pc}: unsupported jump opcode {ins.code:#04x}")
            pc += ins.off + 1 if taken else 1
        else:
            raise BpfRunError(f"pc {pc}: unsupported opcode {ins.code:#04x}")
    raise BpfRunError(f"no exit after {max_steps} steps")
