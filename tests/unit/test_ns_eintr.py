"""EINTR in the syscall core (nvlaunch/_ns.pyx): every call it makes is retried while it fails
with EINTR, and Python signal handlers run between the tries (PEP 475).

On the real kernel, without root: write_file to a FIFO whose reader comes only later
blocks in open(2) and then in write(2) (the data is larger than the pipe buffer) while
SIGALRM, handled in Python without SA_RESTART, fires every 2 ms, so both calls fail
with EINTR again and again.  The wrapper must finish and deliver every byte.

At the source level: every call of a C function in a wrapper must sit in a `with nogil:`
block inside a `while` loop that checks for EINTR, so that a new wrapper without the
retry fails here.
"""
from __future__ import annotations

import ast
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

NS = Path(__file__).resolve().parents[2] / "nvlaunch"
PYX = NS / "_ns.pyx"
PYI = NS / "_ns.pyi"

TICK = 0.002          # SIGALRM period, seconds
READER_DELAY = 0.3    # how long write_file blocks in open(2) before the reader comes


@pytest.fixture
def ns():
    return pytest.importorskip("nvlaunch._ns", reason="the extension is not built "
                               "(setup.py build_ext --inplace)")


class _Alarm:
    """SIGALRM every TICK seconds with a Python handler and no SA_RESTART, so that a blocking
    call in the main thread fails with EINTR instead of being restarted by the kernel."""

    def __init__(self, raise_after: int | None = None):
        self.hits = 0
        self.raise_after = raise_after

    def handle(self, _signum, _frame):
        self.hits += 1
        if self.raise_after is not None and self.hits >= self.raise_after:
            raise _Stop(self.hits)

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self.handle)
        signal.siginterrupt(signal.SIGALRM, True)
        signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
        return self

    def __exit__(self, *_exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


class _Stop(Exception):
    pass


def _start_without_sigalrm(target) -> threading.Thread:
    """A daemon thread that has SIGALRM blocked from its first instruction, so every alarm
    goes to the main thread (the one in the wrapper)."""
    t = threading.Thread(target=target, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t


def _release(fifo: str, reader: threading.Thread) -> None:
    """If the writer gave up, the reader may be blocked opening the FIFO: be its writer."""
    deadline = time.monotonic() + 5
    while reader.is_alive() and time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:       # ENXIO: the reader is not in open(2) yet
            pass
        reader.join(0.05)


def test_write_file_retries_eintr_in_open_and_write(ns, tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    data = os.urandom(1 << 20)          # 16 times the pipe buffer: write(2) blocks too
    got = []

    def reader():
        time.sleep(READER_DELAY)
        fd = os.open(fifo, os.O_RDONLY)
        try:
            while True:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return
                got.append(chunk)
                if len(got) % 16 == 0:
                    time.sleep(TICK)    # let the writer block again, under the alarm
        finally:
            os.close(fd)

    t = _start_without_sigalrm(reader)
    start = time.monotonic()
    try:
        with _Alarm() as alarm:
            ns.write_file(fifo, data)
    except BaseException:
        _release(fifo, t)
        raise
    elapsed = time.monotonic() - start
    t.join(10)
    assert not t.is_alive()
    assert elapsed >= READER_DELAY * 0.8, "write_file did not block in open(2)"
    assert alarm.hits >= 10, "the handler did not run between the tries (PEP 475)"
    assert b"".join(got) == data


def test_a_raising_signal_handler_ends_the_retry(ns, tmp_path):
    """PEP 475: between tries the handlers run; one that raises stops the retry.  The FIFO
    gets a reader only after 3 s (so that a wrapper that never runs the handlers still
    ends), and the exception must come long before."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)

    done = threading.Event()

    def late_reader():
        done.wait(3)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        done.wait(3.5)
        os.close(fd)

    t = _start_without_sigalrm(late_reader)
    start = time.monotonic()
    try:
        with pytest.raises(_Stop):
            with _Alarm(raise_after=3):
                ns.write_file(fifo, b"x")
    finally:
        elapsed = time.monotonic() - start
        done.set()
    assert elapsed < 2, f"the handler's exception came only after {elapsed:.1f} s"
    t.join(10)


# ---------------------------------------------------------------------------------------
# Source level

CALL = re.compile(r"\b(syscall|c_\w+|nvl_\w+)\s*\(")
# Calls that are deliberately not retried (see the _ns.pyx module docstring and write_file).
NOT_RETRIED = {("clone", "syscall"), ("write_file", "c_close")}
RETRY_CHECK = re.compile(r"\b_again\(|\bEINTR\b")


def _code_lines(path: Path) -> list[str]:
    """The source with docstrings and comments blanked, line numbers kept."""
    src = re.sub(r'"""[\s\S]*?"""', lambda m: "\n" * m.group().count("\n"), path.read_text())
    return [line.split("#", 1)[0].rstrip() for line in src.splitlines()]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _functions(lines: list[str]) -> dict[str, list[int]]:
    """Top-level def/cdef name -> the line indexes of its body."""
    out, name = {}, None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if _indent(line) == 0:
            m = re.match(r"(?:cdef\s+(?:inline\s+)?(?:\w+\s+)?)?def\s+(\w+)|cdef\s+(?:inline\s+)?\w+\s+(\w+)\(", line)
            name = (m.group(1) or m.group(2)) if m else None
            if name:
                out[name] = []
            continue
        if name:
            out[name].append(i)
    return out


def _block_end(lines: list[str], head: int) -> int:
    """Index just past the body of the block whose header is lines[head]."""
    k = _indent(lines[head])
    i = head + 1
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > k):
        i += 1
    return i


def _enclosing(lines: list[str], i: int) -> list[int]:
    """Header line indexes of the blocks around lines[i], innermost first."""
    heads, k = [], _indent(lines[i])
    for j in range(i - 1, -1, -1):
        if lines[j].strip() and _indent(lines[j]) < k:
            heads.append(j)
            k = _indent(lines[j])
            if k == 0:
                break
    return heads


def test_every_call_in_the_core_is_retried_on_eintr():
    lines = _code_lines(PYX)
    funcs = _functions(lines)
    assert "_again" in funcs, "the retry helper _again is gone"
    helper = "\n".join(lines[i] for i in funcs["_again"])
    assert "EINTR" in helper and "PyErr_CheckSignals" in helper

    checked, exempt, bad = set(), set(), []
    for name, body in funcs.items():
        if name in ("_again", "_b", "_err"):
            continue
        text = "\n".join(lines[i] for i in body)
        if "with nogil:" in text and not RETRY_CHECK.search(text):
            bad.append(f"{name}: releases the GIL but never checks EINTR")
        for i in body:
            for m in CALL.finditer(lines[i]):
                if (name, m.group(1)) in NOT_RETRIED:
                    exempt.add((name, m.group(1)))
                    continue
                heads = [lines[h].strip() for h in _enclosing(lines, i)]
                nogil = next((n for n, h in enumerate(heads) if h == "with nogil:"), None)
                loop = None
                if nogil is not None:
                    loop = next((h for h in _enclosing(lines, i)[nogil + 1:]
                                 if lines[h].strip().startswith("while")), None)
                if loop is None:
                    bad.append(f"{name} line {i + 1}: {m.group(1)}() is not in a "
                               "`with nogil:` block inside a `while` loop")
                    continue
                loop_text = "\n".join(lines[loop:_block_end(lines, loop)])
                if not RETRY_CHECK.search(loop_text):
                    bad.append(f"{name} line {i + 1}: the loop around {m.group(1)}() "
                               "does not check EINTR")
                checked.add(name)
    assert not bad, "\n".join(bad)
    assert exempt == NOT_RETRIED, "the exemptions no longer match the code"
    # The parse found the wrappers: all public functions but clone make a retried call.
    public = {n for n in funcs if not n.startswith("_")}
    assert checked == public - {"clone"}
    assert len(checked) >= 19


def _pyx_params(lines: list[str]) -> dict[str, list[str]]:
    src = "\n".join(lines)
    out = {}
    for m in re.finditer(r"^def\s+(\w+)\(([^)]*)\)", src, re.M):
        params = []
        for p in m.group(2).split(","):
            p = p.split("=")[0].strip()
            if p:
                params.append(re.split(r"[\s*]+", p)[-1])
        out[m.group(1)] = params
    return out


def test_stub_matches_the_module():
    pyx = _pyx_params(_code_lines(PYX))
    stub = {f.name: [a.arg for a in f.args.args]
            for f in ast.parse(PYI.read_text()).body if isinstance(f, ast.FunctionDef)}
    assert stub == pyx
