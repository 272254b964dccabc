"""Per-phase timings of one launch, on demand (`--timings` or NVLAUNCH_TIMINGS=1).

Off, it costs nothing: callers hold `None` instead of a Timings.  On, each phase is the
time since the previous mark; "startup" is the time from process start (NVLAUNCH_T0_NS,
set by the benchmark to its clock before spawning us, else unknown) to main().
Printed as one JSON line on stderr, prefixed `nvlaunch-timings:`.
"""
from __future__ import annotations

import os
import sys
import time


class Timings:
    def __init__(self, t_main_ns: int):
        self.phases: list[tuple[str, float]] = []
        t0 = os.environ.get("NVLAUNCH_T0_NS")
        if t0 and t0.isdigit():
            self.phases.append(("startup", (t_main_ns - int(t0)) / 1e6))
        self._last = t_main_ns

    def mark(self, phase: str) -> None:
        now = time.monotonic_ns()
        self.phases.append((phase, (now - self._last) / 1e6))
        self._last = now

    def report(self) -> None:
        # JSON written by hand: importing json would add its own cost to what is measured
        body = ", ".join(f'"{name}": {ms:.3f}' for name, ms in self.phases)
        sys.stderr.write("nvlaunch-timings: {" + body + "}\n")
        sys.stderr.flush()
