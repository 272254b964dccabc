"""The benchmark's way of waiting for a launch (benchmarks/latency.py Watchdog): blocking
calls, the exit status and stderr as subprocess.run gives them, and a kill at the limit."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import latency  # noqa: E402


def test_status_and_stderr():
    w = latency.Watchdog(30)
    assert w.run(["sh", "-c", "echo oops >&2; exit 3"], dict(os.environ), subprocess.PIPE) == (3, "oops\n")
    w.timer.join(5)                 # cancelled: the thread ends without killing anything
    assert not w.timer.is_alive() and not w.timed_out


def test_stderr_to_a_file_is_left_there(tmp_path):
    with open(tmp_path / "err", "w+") as f:
        rc, text = latency.Watchdog(30).run(["sh", "-c", "echo kept >&2"], dict(os.environ), f)
        f.seek(0)
        assert (rc, text, f.read()) == (0, "", "kept\n")


def test_a_launch_past_the_limit_is_killed():
    rc, text = latency.Watchdog(0.3).run(["sleep", "30"], dict(os.environ), subprocess.PIPE)
    assert (rc, text) == (-1, "timeout")


def test_orphans_are_reaped_as_the_subreaper():
    """A grandchild orphaned while the benchmark is the subreaper becomes its child and is
    reaped by _reap_orphans (none is left as a zombie)."""
    latency._subreaper(True)
    try:
        out = subprocess.run(["sh", "-c", "sleep 0.2 & echo $!"], capture_output=True, text=True)
        pid = int(out.stdout)
        os.waitpid(pid, 0)      # it is ours now: waitpid would raise ChildProcessError otherwise
    finally:
        latency._subreaper(False)
        latency._reap_orphans()
    assert not os.path.exists(f"/proc/{pid}")
