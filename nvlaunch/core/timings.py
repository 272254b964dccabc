"""Per-phase timings of one launch, on demand (`--timings` or NVLAUNCH_TIMINGS=1).

Off, it costs nothing: callers hold `None` instead of a Timings.  On, each phase is the
time since the previous mark; "startup" is the time from process start (NVLAUNCH_T0_NS,
set by the benchmark to its clock before spawning us, else unknown) to main().
Printed as one JSON line on stderr, prefixed `nvlaunch-timings:`, when the command
starts; at the end two more lines prefixed `nvlaunch-timings-end:` give the command's
run time (PID 1's clock) and P's time from the last setup mark to PID 1's exit, mount
namespace teardown included: their difference is what the exit costs.
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

    def report_end(self, phase: str) -> None:
        """One `nvlaunch-timings-end:` line: the time since the last mark, as `phase`."""
        self.phases = []
        self.mark(phase)
        self.report("nvlaunch-timings-end")

    def report(self, prefix: str = "nvlaunch-timings") -> None:
        # JSON written by hand: importing json would add its own cost to what is measured
        body = ", ".join(f'"{name}": {ms:.3f}' for name, ms in self.phases)
        sys.stderr.write(prefix + ": {" + body + "}\n")
        sys.stderr.flush()
