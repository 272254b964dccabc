"""`nvlaunch run` against the real kernel, without GPUs (--no-gpu is the default here: no
--gpus and no NVIDIA_VISIBLE_DEVICES means an empty plan).

Every test that makes sense for both runs as root and as the unprivileged test user (the
`nvl` fixture); `nvl_nobody` covers the single-id map (no subordinate ids).  Each run
goes through run_ok()/run_fail(), which also check that the run left the rootfs tree and
the host's mount table exactly as they were.
"""
from __future__ import annotations

import errno
import os
import pty
import pwd
import re
import select
import signal
import subprocess
import time

import pytest

from tests.conftest import mounts_snapshot, needs_root, tree_snapshot

pytestmark = needs_root("to switch users, mount")

SH = "/bin/sh"
DEFAULT_CAPBND = 0x00000000a80425fb & ~(1 << 27)   # runc's set without CAP_MKNOD (27)
DEV_ENTRIES = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
               "stdin", "stdout", "stderr"}


# ---- helpers ----------------------------------------------------------------------------

def _run(nvl, rootfs, *args, expect_rc, env=None, opts=(), timeout=30):
    """nvlaunch run OPTS ROOTFS ARGS; asserts the exit status and that neither the rootfs
    nor the host's mounts changed."""
    tree, mounts = tree_snapshot(rootfs), our_mounts(rootfs)
    proc = nvl("run", *opts, rootfs, *args, env=env, timeout=timeout)
    assert proc.returncode == expect_rc, (
        f"nvlaunch run {' '.join(opts)} {' '.join(args)} -> {proc.returncode}, "
        f"expected {expect_rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    assert tree_snapshot(rootfs) == tree, _tree_diff(tree, tree_snapshot(rootfs))
    assert_mounts_unchanged(mounts, rootfs)
    return proc


# Other test sessions (podman, cgroup tests) may mount and unmount elsewhere on this host
# while these tests run; a mount that nvlaunch leaked would show at the rootfs, at the places
# it mounts on inside its own namespace (/tmp, /proc, /sys, /dev), or at /.
_WATCHED = ("/", "/tmp", "/mnt", "/proc", "/sys", "/dev")


def our_mounts(*paths) -> list:
    """The host's mounts (tests.conftest.mounts_snapshot) at the places a leak would show:
    those above, and anywhere under the parent directory of each of `paths`."""
    watched = [os.path.dirname(os.path.abspath(p)) for p in paths]
    out = []
    for entry in mounts_snapshot():
        mp = entry.split(" ", 1)[0]
        if mp in _WATCHED or mp.startswith(("/proc/", "/sys/", "/dev/")) or any(
                mp == w or mp.startswith(w + "/") for w in watched):
            out.append(entry)
    return out


def assert_mounts_unchanged(before: list, *paths) -> None:
    after = our_mounts(*paths)
    if after != before:
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        raise AssertionError(f"host mounts changed: added={added} removed={removed}")


def run_ok(nvl, rootfs, *args, opts=(), env=None, rc=0):
    proc = _run(nvl, rootfs, *args, expect_rc=rc, env=env, opts=opts)
    assert "Traceback" not in proc.stderr
    return proc


def sh(nvl, rootfs, script, opts=(), env=None, rc=0):
    return run_ok(nvl, rootfs, SH, "-c", script, opts=opts, env=env, rc=rc)


def error_line(proc) -> str:
    """The single `nvlaunch: error:` line of a failed run (asserts there is exactly one
    stderr line, and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("nvlaunch: error: "), lines[0]
    return lines[0]


def _tree_diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"rootfs changed: added={added} removed={removed} changed={changed}"


def _proc_stats(text: str) -> list:
    """Lines of /proc/PID/stat -> [(pid, comm, state, ppid)]."""
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d+) \((.*)\) (\S) (\d+) ", line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3), int(m.group(4))))
    return out


def _section(out: str, name: str) -> str:
    """The text between `== name` and the next `== ` marker line."""
    m = re.search(rf"^== {re.escape(name)}\n(.*?)(?=^== |\Z)", out, re.S | re.M)
    assert m, f"no section {name} in:\n{out}"
    return m.group(1)


# ---- command, status, output -----------------------------------------------------------

def test_status_and_output_pass_through(nvl, rootfs):
    p = sh(nvl, rootfs, "echo to-stdout; echo to-stderr >&2; exit 7", rc=7)
    assert p.stdout == "to-stdout\n"
    assert p.stderr == "to-stderr\n"
    p = run_ok(nvl, rootfs, "/bin/echo", "a b", "c")
    assert p.stdout == "a b c\n" and p.stderr == ""
    p = nvl("run", rootfs, "/bin/cat", input="from-stdin\n")     # stdin passes through too
    assert (p.returncode, p.stdout) == (0, "from-stdin\n")
    run_ok(nvl, rootfs, "false", rc=1)                 # found on the container's PATH
    # options after CMD belong to CMD
    p = run_ok(nvl, rootfs, SH, "-c", 'echo "$@"', "x", "--uid", "5", "--bogus")
    assert p.stdout == "--uid 5 --bogus\n"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV],
                         ids=lambda s: s.name)
def test_killed_by_signal(nvl, rootfs, sig):
    p = sh(nvl, rootfs, f"echo before; kill -{int(sig)} $$; echo after", rc=128 + int(sig))
    assert p.stdout == "before\n"


# ---- pid namespace and init --------------------------------------------------------------

def test_pid_namespace_and_orphans_reaped(nvl, rootfs):
    script = (
        "echo == self; echo $$;"
        "echo == init; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
        # an orphan: the inner shell exits at once, its background sleep goes to PID 1
        "sh -c 'sleep 0.3 & exit 0';"
        "sleep 0.1; echo == during; cat /proc/[0-9]*/stat;"
        "sleep 0.6; echo == after; cat /proc/[0-9]*/stat;"
        "echo == end")
    out = sh(nvl, rootfs, script).stdout
    assert _section(out, "self").strip() == "2"
    assert "nvlaunch" in _section(out, "init"), "PID 1 is not nvlaunch's init"
    during = _proc_stats(_section(out, "during"))
    orphans = [p for p in during if p[1] == "sleep" and p[3] == 1]
    assert orphans, f"the orphaned sleep was not reparented to PID 1: {during}"
    after = _proc_stats(_section(out, "after"))
    assert not [p for p in after if p[2] == "Z"], f"zombies left: {after}"
    assert not [p for p in after if p[0] == orphans[0][0]], f"orphan still there: {after}"
    # (the shell expands the glob before it forks cat)
    assert [p[0] for p in after] == [1, 2], f"expected only init and the shell: {after}"


# ---- signal forwarding --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: s.name)
def test_signal_forwarded_to_command(nvl, rootfs, sig):
    name = signal.Signals(sig).name[3:]
    script = (f'trap "echo got-{name}; exit 42" {name}; echo ready; '
              "while :; do sleep 0.1; done")
    tree = tree_snapshot(rootfs)
    proc = nvl.popen("run", rootfs, SH, "-c", script, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the command never printed ready"
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, (proc.returncode, out, err)
    assert out == f"got-{name}\n"
    assert "Traceback" not in err
    assert tree_snapshot(rootfs) == tree


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def test_signal_during_setup_reaches_command(nvl, rootfs):
    """A SIGTERM that nvlaunch forwards while PID 1 is still setting up (or has only just
    started the command) is held and delivered, not dropped by the kernel: the kernel
    discards signals to a namespace's init that has no handler for them."""
    proc = nvl.popen("run", rootfs, SH, "-c",
                     'trap "exit 42" TERM; echo ready; while :; do sleep 0.1; done',
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None:
            assert time.monotonic() < deadline, "nvlaunch never installed its handlers"
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 143: TERM reached the shell before its trap; 42: after it.  A hang is the failure.
    assert proc.returncode in (143, 42), (proc.returncode, out, err)
    assert "Traceback" not in err


def _pids_with_arg(marker: str) -> list:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_container_dies_with_nvlaunch(nvl, rootfs):
    """SIGKILL of nvlaunch itself (nothing to forward) takes the container down with it."""
    marker = f"{31 + os.getpid() % 1000}.{int(time.time() * 1000) % 1000:03d}7"
    proc = nvl.popen("run", rootfs, SH, "-c", f"echo ready; sleep {marker}; echo never",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 5
        while not _pids_with_arg(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pids_with_arg(marker), "the container's sleep is not running"
        proc.kill()
        proc.communicate(timeout=20)
        deadline = time.monotonic() + 5
        while _pids_with_arg(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _pids_with_arg(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"container processes outlived nvlaunch: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- options ------------------------------------------------------------------------------

def test_uid_gid(nvl, rootfs):
    out = sh(nvl, rootfs, "id -u; id -g; touch /dev/shm/f; stat -c %u:%g /dev/shm/f",
             opts=("--uid", "1000", "--gid", "44")).stdout.split()
    assert out == ["1000", "44", "1000:44"]
    out = sh(nvl, rootfs, "id -u; id -g").stdout.split()
    assert out == ["0", "0"]                           # the default


def test_existing_directories_keep_mode_and_owner(nvl, rootfs):
    """The directories nvlaunch prepares in its private layer (/tmp, the workdir) must not
    change the mode or owner the rootfs gives them: a merged overlay directory takes its
    attributes from the upper layer."""
    os.chmod(os.path.join(rootfs, "root"), 0o700)
    os.chown(os.path.join(rootfs, "home/user"), 1000, 1000)
    fmt = "stat -c '%n %a %u:%g' /tmp /root /home/user"
    plain = sh(nvl, rootfs, fmt).stdout.splitlines()
    assert plain[0].split()[1] == "1777", f"/tmp lost its mode 1777: {plain[0]}"
    assert plain[1].split()[1] == "700", plain[1]
    for wd in ("/root", "/home/user", "/tmp"):
        out = sh(nvl, rootfs, fmt, opts=("--workdir", wd)).stdout.splitlines()
        assert out == plain, f"--workdir {wd} changed existing directories: {out} != {plain}"
    # and a user other than root can use /tmp
    sh(nvl, rootfs, "touch /tmp/f", opts=("--uid", "1000", "--gid", "1000"))


def test_hostname_and_clean_env(nvl, rootfs):
    out = sh(nvl, rootfs, "hostname; cat /etc/hostname", opts=("--hostname", "box1")).stdout
    assert out.splitlines() == ["box1", "box1"]        # /etc/hostname in nvlaunch's layer
    with open(os.path.join(rootfs, "etc", "hostname")) as f:
        assert f.read().strip() == "probe"              # the rootfs's file is not rewritten
    p = run_ok(nvl, rootfs, "/bin/env", env={"FOO": "bar", "NVIDIA_VISIBLE_DEVICES": "void"},
               opts=("--hostname", "box1", "--env", "K=V", "-e", "A=b=c", "--env", "EMPTY="))
    env = dict(line.split("=", 1) for line in p.stdout.splitlines())
    assert env["K"] == "V" and env["A"] == "b=c" and env["EMPTY"] == ""
    assert env["HOSTNAME"] == "box1"
    assert "/bin" in env["PATH"].split(":")
    for leaked in ("FOO", "PYTHONPATH", "NVIDIA_VISIBLE_DEVICES"):
        assert leaked not in env, f"host variable {leaked} leaked into the container: {env}"
    assert env["LANG"] == "C.UTF-8"                     # locale and terminal pass (pid1.PASSED_ENV)


def test_workdir_existing_and_new(nvl, rootfs):
    assert sh(nvl, rootfs, "pwd", opts=("--workdir", "/etc")).stdout == "/etc\n"
    out = sh(nvl, rootfs, "pwd; touch f && ls -ld /new/deep/dir && stat -c %a .",
             opts=("-w", "/new/deep/dir")).stdout.splitlines()
    assert out[0] == "/new/deep/dir"
    assert out[-1] == "755"
    # a new workdir under an existing directory of the rootfs
    assert sh(nvl, rootfs, "pwd", opts=("--workdir", "/usr/newdir")).stdout == "/usr/newdir\n"


def test_binds(nvl, rootfs, hostdir):
    rw, ro = os.path.join(hostdir, "rw"), os.path.join(hostdir, "ro")
    for d in (rw, ro):
        os.mkdir(d)
        os.chmod(d, 0o777)
    with open(os.path.join(ro, "existing"), "w") as f:
        f.write("keep\n")
    hostfile = os.path.join(hostdir, "file")
    with open(hostfile, "w") as f:
        f.write("host-file\n")
    os.chmod(hostfile, 0o666)
    script = (
        "echo written > /mnt/a/rw/new && echo rw-ok;"
        "cat /newdir/ro/existing;"
        "echo x > /newdir/ro/new || echo ro-refused;"
        "touch /newdir/ro/existing || echo ro-refused2;"
        "cat /etc/bound-file;"
        "echo appended >> /etc/bound-file && echo file-ok;"
        "cat /etc/debian_version;"                     # the rootfs is still there around them
        "grep -c ' /mnt/a/rw ' /proc/self/mountinfo")
    out = sh(nvl, rootfs, script, opts=(
        "--bind", f"{rw}:/mnt/a/rw", "--bind", f"{ro}:/newdir/ro:ro",
        "--bind", f"{hostfile}:/etc/bound-file")).stdout.splitlines()
    assert out == ["rw-ok", "keep", "ro-refused", "ro-refused2", "host-file", "file-ok", "12.7",
                   "1"]
    with open(os.path.join(rw, "new")) as f:
        assert f.read() == "written\n"                 # persisted on the host
    assert os.listdir(ro) == ["existing"]
    with open(hostfile) as f:
        assert f.read() == "host-file\nappended\n"
    # nothing of /mnt, /newdir or /etc/bound-file in the rootfs: checked by sh() through
    # tree_snapshot; once more explicitly
    for p in ("mnt", "newdir", "etc/bound-file"):
        assert not os.path.lexists(os.path.join(rootfs, p))


def test_bind_rw_option_and_existing_dst(nvl, rootfs, hostdir):
    """`:rw` is accepted; a bind onto a directory that exists in the rootfs hides it and
    leaves it untouched."""
    with open(os.path.join(hostdir, "x"), "w") as f:
        f.write("x\n")
    out = sh(nvl, rootfs, "ls /home; echo y > /home/y && echo ok",
             opts=("--bind", f"{hostdir}:/home:rw")).stdout.split()
    assert out == ["x", "ok"]
    assert os.path.exists(os.path.join(hostdir, "y"))
    assert os.listdir(os.path.join(rootfs, "home")) == ["user"]


def own_rootfs(nvl, rootfs) -> None:
    """Give the rootfs to the user nvlaunch runs as, as a rootless user's own rootfs would be
    (its files then belong to root inside).  A root-owned rootfs in a user namespace shows
    as owned by the overflow id, and the kernel lets nobody inside write its directories:
    test_rootfs_not_writable_by_user covers that case."""
    if nvl.user is None:
        return
    pw = pwd.getpwnam(nvl.user)
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(name, pw.pw_uid, pw.pw_gid)


def test_writes_are_private_and_readonly(nvl, rootfs):
    own_rootfs(nvl, rootfs)
    script = ("touch /newfile && echo data > /etc/passwd && rm /bin/true && mkdir /srv && "
              "echo x > /tmp/x && cat /etc/passwd && ls /bin/true || echo gone")
    out = sh(nvl, rootfs, script).stdout.splitlines()
    assert out == ["data", "gone"]                     # writes work inside...
    assert os.path.exists(os.path.join(rootfs, "bin/true"))   # ...and never reach the rootfs
    with open(os.path.join(rootfs, "etc/passwd")) as f:
        assert f.read().startswith("root:")
    # each run starts from the rootfs again
    assert sh(nvl, rootfs, "ls /newfile || echo fresh").stdout.strip().endswith("fresh")
    out = sh(nvl, rootfs, "touch /x 2>&1; echo rc=$?; echo y >> /etc/passwd; echo rc=$?; "
             "mkdir /etc/z; echo rc=$?; cat /etc/debian_version", opts=("--readonly",)).stdout
    assert "Read-only file system" in out
    assert re.findall(r"rc=(\d+)", out) == ["1", "1", "1"], out
    assert out.rstrip().endswith("12.7")


def test_net_none(nvl, rootfs):
    out = sh(nvl, rootfs, "echo == dev; cat /proc/net/dev; echo == link; busybox ip -o link; "
             "echo == end", opts=("--net", "none")).stdout
    ifaces = [line.split(":")[0].strip() for line in _section(out, "dev").splitlines()[2:]]
    assert ifaces == ["lo"]
    links = _section(out, "link").splitlines()
    assert len(links) == 1 and ": lo:" in links[0], links
    flags = re.search(r"<([^>]*)>", links[0]).group(1).split(",")
    assert "UP" in flags, links[0]


def test_net_none_sysfs_shows_only_lo(nvl, rootfs):
    """Programs enumerate interfaces through /sys/class/net (NCCL, for one): in a new
    network namespace it must show that namespace's interfaces, not the host's."""
    out = sh(nvl, rootfs, "ls /sys/class/net", opts=("--net", "none")).stdout.split()
    assert out == ["lo"], f"/sys/class/net with --net none shows {out}"


def test_net_host(nvl, rootfs):
    host = set(os.listdir("/sys/class/net"))
    for opts in ((), ("--net", "host")):
        out = sh(nvl, rootfs, "cat /proc/net/dev", opts=opts).stdout
        inside = {line.split(":")[0].strip() for line in out.splitlines()[2:]}
        assert inside == host


# ---- /proc, /sys, /dev ---------------------------------------------------------------------

def test_proc_sys_dev(nvl, rootfs):
    script = (
        "echo == proc; ls /proc;"
        "echo == mountinfo; cat /proc/self/mountinfo;"
        "echo == dev; ls -a /dev;"
        "echo == io; head -c 5 /dev/zero | wc -c; echo x > /dev/null && echo null-ok;"
        "echo x > /dev/full || echo full-refused; head -c 8 /dev/urandom | wc -c;"
        "echo == pts; exec 3<>/dev/ptmx && ls /dev/pts; exec 3>&-;"
        "echo == shm; echo s > /dev/shm/s && cat /dev/shm/s;"
        "echo == sys; mkdir /sys/fs/cgroup/nvl-test-probe 2>&1; echo rc=$?;"
        "echo == end")
    out = sh(nvl, rootfs, script).stdout
    pids = [int(x) for x in _section(out, "proc").split() if x.isdigit()]
    assert 1 in pids and max(pids) < 50, f"/proc shows other pids: {pids}"
    mounts = {}
    for line in _section(out, "mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")
        mounts[fields[4]] = (fields[5].split(","), fields[sep + 1])
    assert mounts["/proc"][1] == "proc"
    sys_mounts = {k: v for k, v in mounts.items() if k == "/sys" or k.startswith("/sys/")}
    assert sys_mounts and all("ro" in opts for opts, _ in sys_mounts.values()), sys_mounts
    assert mounts["/dev/pts"][1] == "devpts"
    dev = set(_section(out, "dev").split()) - {".", ".."}
    assert dev == DEV_ENTRIES
    assert _section(out, "io").split() == ["5", "null-ok", "full-refused", "8"]
    assert set(_section(out, "pts").split()) == {"0", "ptmx"}
    assert _section(out, "shm").strip() == "s"
    sys_out = _section(out, "sys")
    assert "rc=0" not in sys_out and "Read-only file system" in sys_out, sys_out
    assert not os.path.exists("/sys/fs/cgroup/nvl-test-probe")


def test_capabilities_as_root(nvl_root, rootfs):
    out = sh(nvl_root, rootfs, "grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status").stdout
    st = dict(line.split(":\t") for line in out.splitlines())
    assert int(st["CapBnd"], 16) == DEFAULT_CAPBND, st
    assert int(st["CapEff"], 16) == DEFAULT_CAPBND, st
    assert st["NoNewPrivs"] == "1"
    out = sh(nvl_root, rootfs, "grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status",
             opts=("--uid", "1000", "--gid", "1000")).stdout
    st = dict(line.split(":\t") for line in out.splitlines())
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == DEFAULT_CAPBND, st
    assert st["NoNewPrivs"] == "1"


def test_no_new_privs(nvl, rootfs):
    out = sh(nvl, rootfs, "grep NoNewPrivs /proc/self/status").stdout
    assert out.split() == ["NoNewPrivs:", "1"]


# ---- terminal ---------------------------------------------------------------------------

def _pty_read_until(fd: int, pattern: str, buf: bytearray, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf.decode(errors="replace"), re.M):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as err:
            if err.errno == errno.EIO:
                return False
            raise
        if not chunk:
            return False
        buf += chunk
    return True


def test_terminal_interactive_shell(nvl, rootfs):
    tree = tree_snapshot(rootfs)
    argv = nvl.cmd("run", rootfs, SH, "-i")
    env = nvl.environ({"TERM": "dumb"})
    pid, fd = pty.fork()
    if pid == 0:   # the child: its controlling terminal is the pty
        try:
            os.chdir("/")
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(99)
    buf = bytearray()
    try:
        os.write(fd, b"echo $((6*7))\n")
        assert _pty_read_until(fd, r"^42\r?$", buf), buf.decode(errors="replace")
        os.write(fd, b"exit 3\n")
        _pty_read_until(fd, r"\Zx", buf, timeout=20)   # read until EOF / EIO
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    text = buf.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 3, text
    assert "Traceback" not in text and "nvlaunch: error" not in text, text
    assert tree_snapshot(rootfs) == tree


# ---- exec failures ------------------------------------------------------------------------

@pytest.mark.parametrize("cmd, rc", [("/etc/passwd", 126), ("/etc", 126),
                                     ("/no/such/cmd", 127), ("nosuchcmd", 127)])
def test_exec_failures(nvl, rootfs, cmd, rc):
    p = _run(nvl, rootfs, cmd, "arg", expect_rc=rc)
    line = error_line(p)
    assert cmd in line
    assert p.stdout == ""


# ---- bad input ----------------------------------------------------------------------------

BAD_INPUTS = {
    # id: (options, rootfs replacement or None, text the error line must name)
    "missing-rootfs": ((), "/nonexistent/rootfs", "/nonexistent/rootfs"),
    "rootfs-is-file": ((), "FILE", "FILE"),
    "unknown-option": (("--bogus-opt",), None, "--bogus-opt"),
    "uid-abc": (("--uid", "abc"), None, "abc"),
    "gid-negative": (("--gid", "-5"), None, "-5"),
    "uid-unmappable": (("--uid", "4294967295"), None, "4294967295"),
    "gid-unmappable": (("--gid", "4294967295"), None, "4294967295"),
    "bind-no-colon": (("--bind", "/tmp"), None, "/tmp"),
    "bind-relative-dst": (("--bind", "/tmp:relative"), None, "relative"),
    "bind-bad-mode": (("--bind", "/tmp:/x:rx"), None, "/tmp:/x:rx"),
    "bind-missing-src": (("--bind", "/nonexistent/src:/x"), None, "/nonexistent/src"),
    "net-bogus": (("--net", "bogus"), None, "bogus"),
    "env-empty-name": (("--env", "=value"), None, "=value"),
    "workdir-relative": (("--workdir", "rel/dir"), None, "rel/dir"),
    "option-missing-value": (("--hostname",), None, "--hostname"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(nvl, rootfs, hostdir, case):
    opts, root_arg, named = BAD_INPUTS[case]
    if root_arg == "FILE":
        root_arg = os.path.join(hostdir, "a-file")
        with open(root_arg, "w") as f:
            f.write("not a rootfs\n")
        named = root_arg
    tree, mounts = tree_snapshot(rootfs), our_mounts(rootfs, hostdir + "/x")
    args = ["run", *opts]
    if case != "option-missing-value":
        args += [root_arg or rootfs, SH, "-c", "echo ran; touch /left-behind"]
    p = nvl(*args)
    assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
    line = error_line(p)
    assert named in line, f"error line does not name {named!r}: {line}"
    assert "ran" not in p.stdout
    assert tree_snapshot(rootfs) == tree
    assert_mounts_unchanged(mounts, rootfs, hostdir + "/x")


# ---- the rootfs is never written ------------------------------------------------------------

def test_rootfs_untouched_by_every_kind_of_run(nvl, rootfs, hostdir):
    os.chmod(hostdir, 0o777)
    tree = tree_snapshot(rootfs)
    runs = [
        ((), "touch /a /etc/b /tmp/c; rm -f /etc/passwd; mkdir -p /var/lib/x; ln -s / /l"),
        (("--workdir", "/brand/new"), "touch here"),
        (("--bind", f"{hostdir}:/opt/new/bind"), "touch /opt/new/bind/f /opt/g"),
        (("--bind", f"{hostdir}:/etc/newdir:ro", "--readonly"), "ls /etc/newdir"),
        (("--uid", "1000", "--gid", "1000", "--hostname", "h", "--net", "none"),
         "touch /dev/shm/x"),
        (("--env", "X=1", "--workdir", "/tmp/w"), "chmod 700 /etc; chown 5:5 /bin || true"),
    ]
    for opts, script in runs:
        sh(nvl, rootfs, script, opts=opts)
    assert tree_snapshot(rootfs) == tree
    st = os.stat(os.path.join(rootfs, "etc"))
    assert (st.st_uid, oct(st.st_mode & 0o7777)) == (0, "0o755")


# ---- rootfs the user cannot write --------------------------------------------------------

# Writes a container makes on a root-owned rootfs: root may write anywhere; in a user
# namespace the rootfs's directories belong to the (unmapped) overflow id, so only the
# places nvlaunch makes itself (/, new directories, /dev/shm) are writable.
WRITES = {True: "touch /x /etc/y && mkdir /newdir /etc/d && echo ok",
          False: "touch /x /dev/shm/y && mkdir /newdir && touch /newdir/z && echo ok"}


def test_rootfs_not_writable_by_user(nvl, rootfs):
    st = os.stat(rootfs)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o755
    # the test user really cannot write it
    probe = subprocess.run(["setpriv", "--reuid=nvltest", "--regid=nvltest", "--init-groups",
                            "touch", os.path.join(rootfs, "x")], capture_output=True)
    assert probe.returncode != 0
    out = sh(nvl, rootfs, WRITES[nvl.user is None]).stdout
    assert out == "ok\n"


@pytest.fixture
def readonly_rootfs(rootfs):
    """The rootfs seen through a read-only bind mount (removed after the test)."""
    target = rootfs + "-ro"
    os.mkdir(target, 0o755)
    subprocess.run(["mount", "--bind", rootfs, target], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
        yield target
    finally:
        subprocess.run(["umount", target], check=True)
        os.rmdir(target)


def test_rootfs_on_readonly_mount(nvl, readonly_rootfs):
    with pytest.raises(OSError) as exc:
        open(os.path.join(readonly_rootfs, "x"), "w")
    assert exc.value.errno == errno.EROFS
    out = sh(nvl, readonly_rootfs, WRITES[nvl.user is None],
             opts=("--workdir", "/new/wd", "--bind", "/etc/hostname:/mnt/h:ro")).stdout
    assert out == "ok\n"
    assert sh(nvl, readonly_rootfs, "touch / 2>&1; echo rc=$?",
              opts=("--readonly",)).stdout.strip().endswith("rc=1")


# ---- the single-id map ------------------------------------------------------------------

def test_single_id_map(nvl_nobody, rootfs, hostdir):
    out = sh(nvl_nobody, rootfs, "echo == id; id -u; id -g; echo == map; cat /proc/self/uid_map;"
             "echo == w; touch /x && echo /x-ok; echo v > /b/v && echo bind-ok; echo == end",
             opts=("--bind", f"{hostdir}:/b")).stdout
    assert _section(out, "id").split() == ["0", "0"]
    uid_map = _section(out, "map").splitlines()
    assert len(uid_map) == 1 and uid_map[0].split() == ["0", "65534", "1"], uid_map
    assert _section(out, "w").split() == ["/x-ok", "bind-ok"]
    assert os.stat(os.path.join(hostdir, "v")).st_uid == 65534
    out = sh(nvl_nobody, rootfs, "id -u; id -g", opts=("--uid", "1000", "--gid", "1000")).stdout
    assert out.split() == ["1000", "1000"]


def test_timings_lines(nvl, rootfs):
    """--timings: one `nvlaunch-timings:` JSON line when the command starts (setup phases)
    and two `nvlaunch-timings-end:` lines (the command; P's wait until PID 1 was gone)
    on stderr; stdout is the command's alone."""
    import json
    r = nvl("run", "--timings", rootfs, SH, "-c", "echo out")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out\n"
    lines = r.stderr.splitlines()
    start = [json.loads(x.split(":", 1)[1]) for x in lines if x.startswith("nvlaunch-timings:")]
    end = [json.loads(x.split(":", 1)[1]) for x in lines if x.startswith("nvlaunch-timings-end:")]
    assert len(start) == 1 and {"prepare", "namespaces", "overlay", "pivot", "init"} <= set(start[0])
    assert [list(d) for d in end] == [["command"], ["container"]], end
    assert all(v >= 0 for d in start + end for v in d.values())
    assert end[1]["container"] >= end[0]["command"]
