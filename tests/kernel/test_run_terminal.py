"""`nvlaunch run` at a real terminal, under a real interactive bash on a pty, as root and
as the unprivileged test user: job control (^Z stops the container and the launcher,
`fg` resumes, ^C reaches the command, a background run never takes the terminal), a
resize reaching the container, and a command that starts with default signal
dispositions and an empty mask."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios

import pytest

from tests.conftest import needs_root
from tests.kernel.test_run import _pty_read_until

pytestmark = needs_root("switching users, a rootfs owned by root")
PROMPT = "PROMPT> "


class Bash:
    """An interactive bash on a pty (its controlling terminal), as `nvl`'s user."""

    def __init__(self, nvl):
        env = nvl.environ({"TERM": "dumb", "PS1": PROMPT, "HISTFILE": "/dev/null"})
        if nvl.user:
            prefix = ["setpriv", f"--reuid={nvl.user}", f"--regid={nvl.group}", "--init-groups"]
            self.nvlaunch = "/usr/bin/python3 -m nvlaunch"
        else:
            prefix = []
            self.nvlaunch = f"{sys.executable} -m nvlaunch"
        argv = prefix + ["/bin/bash", "--norc", "--noprofile", "--noediting", "-i"]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.chdir("/")
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(99)
        self.buf = bytearray()
        self.pending = bytearray()
        self.expect(re.escape(PROMPT))
        self.send("stty -echo\n")       # what the terminal shows is output only, not our input
        self.expect(re.escape(PROMPT))

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 30) -> str:
        """Read until `pattern` shows (a hang guard, not a timing); returns what came."""
        new = self.pending
        ok = _pty_read_until(self.fd, pattern, new, timeout)
        text = new.decode(errors="replace")
        assert ok, f"no {pattern!r} on the terminal; it showed:\n{text[-3000:]}"
        m = re.search(pattern, text, re.M)
        end = len(text[:m.end()].encode()) if m else len(new)
        self.buf += new[:end]
        self.pending = bytearray(new[end:])      # what came after the match: the next read's
        return text[:m.end()] if m else text

    def run(self, line: str) -> str:
        """A command line; what it printed up to the next prompt."""
        mark = f"__done_{len(self.buf)}__"
        self.send(f"{line}; echo {mark}\n")
        return self.expect(re.escape(mark) + r"\r?\n")

    def job_in_foreground(self, timeout: float = 30) -> None:
        """Wait until bash has handed the terminal to a job (tcgetpgrp on the master names
        the slave's foreground group): a ^C sent before would reach bash, not the job."""
        import time
        end = time.monotonic() + timeout
        while os.tcgetpgrp(self.fd) == self.pid:
            assert time.monotonic() < end, "bash never gave the terminal to the job"
            time.sleep(0.02)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def bash(nvl):
    b = Bash(nvl)
    yield b
    b.close()


def test_ctrl_z_stops_the_whole_job_and_fg_resumes_it(bash, rootfs):
    bash.send(f"{bash.nvlaunch} run {rootfs} /bin/sh -c 'echo started; exec sleep 100'\n")
    bash.expect("started")
    bash.job_in_foreground()
    bash.send("\x1a")                                  # ^Z
    out = bash.expect(re.escape(PROMPT))
    assert "Stopped" in out, out                       # bash got its job back: the prompt
    assert "Stopped" in bash.run("jobs")
    bash.send("fg\n")
    bash.expect("sleep 100")                           # bash names the job it resumes
    bash.job_in_foreground()
    bash.send("\x03")                                  # ^C reaches the container's sleep
    bash.expect(re.escape(PROMPT))
    assert "rc=130" in bash.run("echo rc=$?")
    assert "alive-2" in bash.run("echo alive-$((1+1))")


def test_a_background_run_never_takes_the_terminal(bash, rootfs):
    bash.send(f"{bash.nvlaunch} run {rootfs} /bin/sh -c 'sleep 1; echo bgdone' &\n")
    assert "alive-42" in bash.run("echo alive-$((40+2))")   # the shell still reads its input
    out = bash.run("wait; echo waited-$?")
    assert "bgdone" in out and "waited-0" in out, out
    assert "still-2" in bash.run("echo still-$((1+1))")
    assert "Stopped" not in bash.run("jobs")


def test_a_resize_reaches_the_container(bash, rootfs):
    bash.send(f"{bash.nvlaunch} run {rootfs} /bin/sh -c "
              "'trap \"stty size\" WINCH; echo ready; while :; do sleep 0.1; done'\n")
    bash.expect("ready")
    bash.job_in_foreground()
    fcntl.ioctl(bash.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    bash.expect(r"33 101")
    bash.send("\x03")
    bash.expect(re.escape(PROMPT))


def test_the_command_starts_with_default_signals(bash, rootfs):
    out = bash.run(f"{bash.nvlaunch} run {rootfs} /bin/sh -c "
                   "'grep -E \"^Sig(Ign|Blk)\" /proc/self/status; yes | head -1; echo rc=$?'")
    masks = dict(re.findall(r"(SigIgn|SigBlk):\s+([0-9a-f]+)", out))
    assert set(masks) == {"SigIgn", "SigBlk"}, out
    for name, value in masks.items():                  # the 31 standard signals
        assert int(value, 16) & 0x7FFFFFFF == 0, (name, value)
    assert re.search(r"^y\r?$", out, re.M) and "rc=0" in out, out
    assert "Broken pipe" not in out
