"""cgroup.py: finding a process's device cgroup, and widening its device rules.

Three parts:
- find_cgroup over a fake /proc (no root needed);
- allow_devices against a recording fake kernel: the call sequence and the undo on a
  failure midway (no root needed);
- allow_devices against the REAL kernel (root; skipped per controller when absent):
  a helper process is moved into a fresh test cgroup and asked to open device nodes
  made with mknod in a tmp dir.  Major 195 (nvidia) has no driver here, so an open the
  cgroup allows fails with ENXIO from chrdev_open(), one it denies fails with EPERM
  from devcgroup_check_permission() before that (security/device_cgroup.c).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import time
import traceback

import pytest

from tests.conftest import is_root, needs_root, require_root
from tests.fakes import FakeKernel as _Fake

from nvlaunch.plan import bpf
from nvlaunch.exec.cgroup import allow_devices, load_device_program
from nvlaunch.host.cgroups import (
    CgroupTarget, find_cgroup, needs_cgroup_rules, parse_mountinfo, parse_proc_cgroup,
)
from nvlaunch.core.consts import (
    BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, BPF_F_REPLACE, BPF_PROG_TYPE_CGROUP_DEVICE,
)
from nvlaunch.plan.devices import DeviceRule
from nvlaunch.core.errors import CgroupError

GPU0 = DeviceRule("c", 195, 0, "rw")
NULL = DeviceRule("c", 1, 3, "rwm")

V1_ROOT = "/sys/fs/cgroup/devices"
V2_ROOT = "/sys/fs/cgroup/unified"


# ---- find_cgroup over a fake /proc ------------------------------------------------

HYBRID_CGROUP = """\
12:cpuset:/
9:name=systemd:/system.slice/docker-abc.scope
6:net_cls,net_prio:/
5:devices:/system.slice/docker-abc.scope
1:net_cls:/
0::/system.slice/docker-abc.scope
"""

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime shared:9 - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:3 master:1 - cgroup2 cgroup2 rw
"""


def fake_proc(tmp_path, cgroup, mountinfo, pid=4242):
    (tmp_path / "proc" / str(pid)).mkdir(parents=True)
    (tmp_path / "proc" / "self").mkdir()
    (tmp_path / "proc" / str(pid) / "cgroup").write_text(cgroup)
    (tmp_path / "proc" / "self" / "mountinfo").write_text(mountinfo)
    return str(tmp_path)


def test_find_cgroup_hybrid_prefers_v1_devices(tmp_path):
    root = fake_proc(tmp_path, HYBRID_CGROUP, MOUNTINFO)
    assert find_cgroup(4242, proc_root=root) == CgroupTarget(
        1, "/sys/fs/cgroup/devices/system.slice/docker-abc.scope")


def test_find_cgroup_v2_only(tmp_path):
    root = fake_proc(tmp_path, "0::/user.slice/c1\n",
                     "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert find_cgroup(4242, proc_root=root) == CgroupTarget(2, "/sys/fs/cgroup/user.slice/c1")


def test_find_cgroup_v2_when_devices_line_is_missing(tmp_path):
    # "1:net_cls:/" before "0::" broke NVIDIA's parser (libnvidia-container#150).
    root = fake_proc(tmp_path, "1:net_cls:/\n0::/x\n", MOUNTINFO)
    assert find_cgroup(4242, proc_root=root) == CgroupTarget(2, "/sys/fs/cgroup/unified/x")


@pytest.mark.parametrize("cgroup, mountinfo", [
    # a runtime that sees only cgroup2 at /sys/fs/cgroup (a v1 devices controller exists
    # but is mounted nowhere it looks): it used eBPF on v2
    ("5:devices:/x\n0::/c1\n", "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
    # in the v1 root, which allows every device: the runtime did not use v1
    ("5:devices:/\n0::/c1\n", MOUNTINFO.replace("/sys/fs/cgroup/unified", "/sys/fs/cgroup")),
])
def test_find_cgroup_hybrid_picks_v2_when_the_runtime_did(tmp_path, cgroup, mountinfo):
    root = fake_proc(tmp_path, cgroup, mountinfo)
    assert find_cgroup(4242, proc_root=root) == CgroupTarget(2, "/sys/fs/cgroup/c1")


def test_find_cgroup_strips_nested_mount_root(tmp_path):
    # A cgroup2 mount whose root is a sub-cgroup (bind mount / nested container): the
    # mount root is stripped from the process's path.  Paths with ':' survive.
    mi = "50 1 0:38 /kubepods /mnt/cg rw - cgroup2 cgroup2 rw\n"
    root = fake_proc(tmp_path, "0::/kubepods/pod1.slice:cri-containerd:abc\n", mi)
    assert find_cgroup(4242, proc_root=root) == CgroupTarget(
        2, "/mnt/cg/pod1.slice:cri-containerd:abc")


def test_find_cgroup_unescapes_mount_points(tmp_path):
    mi = "50 1 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n"
    root = fake_proc(tmp_path, "0::/a\n", mi)
    assert find_cgroup(4242, proc_root=root).path == "/mnt/my cg/a"


@pytest.mark.parametrize("cgroup, mountinfo, match", [
    ("0::/../escape\n", MOUNTINFO, "contains '..'"),
    ("0::/x\n", "50 1 0:38 /.. /mnt/cg rw - cgroup2 cgroup2 rw\n", "outside every mount"),
    ("0::/other/x\n", "50 1 0:38 /kubepods /mnt/cg rw - cgroup2 cgroup2 rw\n",
     "outside every mount"),
    ("5:devices:/x\n", "41 31 0:38 / /u rw - cgroup2 cgroup2 rw\n",
     "no v1 devices hierarchy"),
    ("1:net_cls:/\n", MOUNTINFO, "no devices or unified"),
])
def test_find_cgroup_rejects(tmp_path, cgroup, mountinfo, match):
    root = fake_proc(tmp_path, cgroup, mountinfo)
    with pytest.raises(CgroupError, match=match):
        find_cgroup(4242, proc_root=root)


def test_find_cgroup_missing_process(tmp_path):
    with pytest.raises(CgroupError, match="read .*/proc/9/cgroup"):
        find_cgroup(9, proc_root=str(tmp_path))


def test_parsers_directly():
    assert parse_proc_cgroup(HYBRID_CGROUP) == ("/system.slice/docker-abc.scope",
                                               "/system.slice/docker-abc.scope")
    assert parse_proc_cgroup("garbage\n\n") == (None, None)
    m = parse_mountinfo(MOUNTINFO)[2]
    assert (m.root, m.mount_point, m.fstype, m.super_options) == (
        "/", "/sys/fs/cgroup/devices", "cgroup", ("rw", "devices"))


def test_needs_cgroup_rules(tmp_path):
    (tmp_path / "proc" / "self").mkdir(parents=True)
    uid_map = tmp_path / "proc" / "self" / "uid_map"
    uid_map.write_text("         0          0 4294967295\n")
    assert needs_cgroup_rules(str(tmp_path)) == is_root()
    uid_map.write_text("         0       1000          1\n")   # a rootless userns
    assert needs_cgroup_rules(str(tmp_path)) is False


# ---- allow_devices against a recording fake kernel --------------------------------

def FakeKernel(**kw):
    """The shared recording fake (tests/fakes.py), as a cgroup with two device programs
    attached looks to it."""
    return _Fake(virtual_files=True, old_program=bpf.compile_rules([NULL]), **kw)


def v1_dir(tmp_path, listing):
    (tmp_path / "devices.list").write_text(listing)
    return str(tmp_path)


def test_v1_writes_one_line_per_rule_and_undo_denies(tmp_path):
    path = v1_dir(tmp_path, "c 1:3 rwm\nc 195:255 r\n")
    k = FakeKernel()
    rules = [GPU0, DeviceRule("c", 195, 255, "rw"), DeviceRule("c", 1, 3, "rw")]
    undo = allow_devices(CgroupTarget(1, path), rules, kernel=k)
    # 195:255 already had r: only w is new; 1:3 is already fully allowed: no write.
    assert k.named("write_file") == [(f"{path}/devices.allow", "c 195:0 rw"),
                                     (f"{path}/devices.allow", "c 195:255 w")]
    assert undo.changes == ["allow c 195:0 rw", "allow c 195:255 w"]
    undo.undo()
    assert k.named("write_file")[2:] == [(f"{path}/devices.deny", "c 195:255 w"),
                                         (f"{path}/devices.deny", "c 195:0 rw")]
    undo.undo()                            # idempotent
    assert len(k.named("write_file")) == 4


def test_v1_default_allow_cgroup_still_writes(tmp_path):
    path = v1_dir(tmp_path, "a *:* rwm\n")
    k = FakeKernel()
    allow_devices(CgroupTarget(1, path), [GPU0], kernel=k).close()
    assert k.named("write_file") == [(f"{path}/devices.allow", "c 195:0 rw")]


def test_v1_failure_midway_is_undone(tmp_path):
    path = v1_dir(tmp_path, "c 1:3 rwm\n")
    k = FakeKernel(fail={("write_file", 2): errno.EPERM})
    with pytest.raises(CgroupError) as info:
        allow_devices(CgroupTarget(1, path), [GPU0, DeviceRule("c", 195, 1, "rw")], kernel=k)
    msg = str(info.value)
    assert path in msg and "Operation not permitted" in msg and "c 195:1 rw" in msg
    assert k.named("write_file") == [(f"{path}/devices.allow", "c 195:0 rw"),
                                     (f"{path}/devices.allow", "c 195:1 rw"),
                                     (f"{path}/devices.deny", "c 195:0 rw")]


def test_v1_refuses_deny_rules(tmp_path):
    with pytest.raises(ValueError):
        allow_devices(CgroupTarget(1, str(tmp_path)), [DeviceRule("c", 1, 3, "r", False)],
                      kernel=FakeKernel())


def test_v2_replaces_each_program_atomically():
    k = FakeKernel()
    undo = allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k)
    multi_replace = BPF_F_ALLOW_MULTI | BPF_F_REPLACE
    assert k.named("open") == [("/cg",)]
    assert k.named("bpf_prog_query") == [(3, BPF_CGROUP_DEVICE, 64)]
    assert k.named("bpf_prog_get_fd_by_id") == [(10,), (11,)]
    new_len = len(bpf.prepend_rules([GPU0], k.old_program))
    assert k.named("bpf_prog_load") == [(BPF_PROG_TYPE_CGROUP_DEVICE, new_len, "Apache", 0)] * 2
    assert k.named("bpf_prog_attach") == [(201, 3, BPF_CGROUP_DEVICE, multi_replace, 110),
                                          (202, 3, BPF_CGROUP_DEVICE, multi_replace, 111)]
    undo.undo()
    assert k.named("bpf_prog_attach")[2:] == [(111, 3, BPF_CGROUP_DEVICE, multi_replace, 202),
                                              (110, 3, BPF_CGROUP_DEVICE, multi_replace, 201)]
    assert sorted(k.closed) == [3, 110, 111, 201, 202]


def test_undo_as_context_manager_reverts_only_on_error():
    k = FakeKernel()
    with pytest.raises(RuntimeError):
        with allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k):
            raise RuntimeError("container failed to start")
    assert len(k.named("bpf_prog_attach")) == 4          # 2 swaps in, 2 swaps back
    k2 = FakeKernel()
    with allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k2):
        pass
    assert len(k2.named("bpf_prog_attach")) == 2 and sorted(k2.closed) == [3, 110, 111, 201, 202]


def test_v2_single_program_is_replaced_with_its_own_flags():
    k = FakeKernel(progs=[7], attach_flags=0)
    allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k).undo()
    assert k.named("bpf_prog_attach") == [(201, 3, BPF_CGROUP_DEVICE, 0, 0),
                                          (107, 3, BPF_CGROUP_DEVICE, 0, 0)]


def test_v2_no_program_means_nothing_to_do():
    k = FakeKernel(progs=[])
    undo = allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k)
    assert undo.changes == [] and k.named("bpf_prog_load") == []
    undo.close()
    assert k.closed == [3]


def test_v2_query_buffer_grows_on_enospc():
    k = FakeKernel(fail={("bpf_prog_query", 1): errno.ENOSPC})
    allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k).close()
    assert [a[2] for a in k.named("bpf_prog_query")] == [64, 256]


def test_v2_failure_midway_restores_first_program():
    k = FakeKernel(fail={("bpf_prog_attach", 2): errno.ENOENT})
    with pytest.raises(CgroupError) as info:
        allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k)
    assert "/cg" in str(info.value) and "No such file or directory" in str(info.value)
    assert "device program id 11" in str(info.value)
    multi_replace = BPF_F_ALLOW_MULTI | BPF_F_REPLACE
    assert k.named("bpf_prog_attach")[-1] == (110, 3, BPF_CGROUP_DEVICE, multi_replace, 201)
    assert sorted(k.closed) == [3, 110, 111, 201, 202]


def test_v2_unreadable_program_is_an_error_not_skipped():
    k = FakeKernel(fail={("bpf_prog_get_fd_by_id", 1): errno.EPERM})
    with pytest.raises(CgroupError, match="open device program id 10: Operation not permitted"):
        allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k)
    assert k.named("bpf_prog_attach") == []


def test_v2_program_we_cannot_reload_is_an_error():
    k = FakeKernel()
    k.old_program = bpf.insn(0x85, imm=14) + bpf.insn(0x95)
    with pytest.raises(CgroupError, match="cannot extend device program id 10"):
        allow_devices(CgroupTarget(2, "/cg"), [GPU0], kernel=k)


def test_load_retries_with_a_growing_verifier_log():
    k = FakeKernel(fail={("bpf_prog_load", 1): errno.EINVAL, ("bpf_prog_load", 2): errno.ENOSPC,
                         ("bpf_prog_load", 3): errno.EINVAL})
    with pytest.raises(OSError) as info:
        load_device_program(bpf.compile_rules([NULL]), kernel=k)
    assert info.value.errno == errno.EINVAL
    assert [a[3] for a in k.named("bpf_prog_load")] == [0, 64 << 10, 256 << 10]


# ---- the REAL kernel --------------------------------------------------------------

def _mounted(fstype, option=None):
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        return None
    for m in mounts:
        if m.fstype == fstype and (option is None or option in m.super_options):
            return m.mount_point
    return None


def _do(op):
    """One probe operation in the member process; 0 or the errno."""
    try:
        if op[0] == "open":
            os.close(os.open(op[1], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        elif op[0] == "mknod":
            os.mknod(op[1], stat.S_IFCHR | 0o600, os.makedev(op[2], op[3]))
            os.unlink(op[1])
        return 0
    except OSError as err:
        return err.errno


class Member:
    """A forked process that first moves itself into a cgroup (one write of its pid to
    cgroup.procs, cgroups(7)) and then runs probe operations on request, so the same
    process is tested before allow_devices, after it and after undo."""

    def __init__(self, procs_file):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                                  # child: os calls only
            try:
                os.close(self._to_child)
                os.close(self._from_child)
                fd = os.open(procs_file, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.write(from_child_w, b'"ready"\n')
                with os.fdopen(to_child_r) as inp:
                    for line in inp:
                        reply = json.dumps([_do(op) for op in json.loads(line)]) + "\n"
                        os.write(from_child_w, reply.encode())
            except BaseException:
                os.write(from_child_w, (json.dumps(traceback.format_exc()) + "\n").encode())
            finally:
                os._exit(0)
        os.close(to_child_r)
        os.close(from_child_w)
        self._reader = os.fdopen(self._from_child)
        first = json.loads(self._reader.readline() or '"child died"')
        if first != "ready":
            self.stop()
            raise AssertionError(f"member failed to join {procs_file}: {first}")

    def ask(self, *ops):
        os.write(self._to_child, (json.dumps(ops) + "\n").encode())
        return json.loads(self._reader.readline())

    def stop(self):
        if self.pid:
            try:
                os.close(self._to_child)
            except OSError:
                pass
            os.waitpid(self.pid, 0)
            self._reader.close()
            self.pid = 0


def _rmdir(path):
    # The member is reaped before this runs; an emptied cgroup can still be busy
    # for a moment while the exit is processed, so retry briefly.
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    os.rmdir(path)


@pytest.fixture
def nodes(tmp_path):
    """c 195:0, c 195:1 in a tmp dir (made from the test process, which is in the root
    cgroups and so may mknod), plus the real /dev/null."""
    require_root("to make device nodes")
    paths = {}
    for minor in (0, 1):
        p = str(tmp_path / f"nvidia{minor}")
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(195, minor))
        paths[minor] = p
    # From here (no device policy) an open reaches the driver lookup: ENXIO.  EACCES
    # means the tmp dir is on a nodev mount (may_open() refuses before any cgroup check).
    got = _do(["open", paths[0]])
    if got == errno.EACCES:
        pytest.skip(f"{tmp_path} is on a nodev mount: device nodes cannot be opened there")
    if got in (errno.EPERM, errno.EACCES):
        pytest.skip(f"c 195:0 cannot be opened even outside the test cgroup: {os.strerror(got)}")
    # ENXIO without an NVIDIA driver; with one loaded, whatever the driver answers.
    paths["allowed"] = got
    paths["null"] = "/dev/null"
    paths["new"] = str(tmp_path / "made-inside")
    return paths


def _probe(member, nodes):
    """(open 195:0, open 195:1, open /dev/null, mknod 195:0) as errnos."""
    return tuple(member.ask(["open", nodes[0]], ["open", nodes[1]], ["open", nodes["null"]],
                            ["mknod", nodes["new"], 195, 0]))


DENIED_GPU = (errno.EPERM, errno.EPERM, 0, errno.EPERM)


def allowed_gpu(nodes):
    """195:0 opens as it does outside any cgroup (ENXIO: no driver here), 195:1 and
    mknod stay refused, /dev/null opens."""
    return (nodes["allowed"], errno.EPERM, 0, errno.EPERM)


@pytest.fixture
def v2_cgroup():
    require_root("to change cgroups")
    root = _mounted("cgroup2")
    if root is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    if root != V2_ROOT and os.path.isdir(V2_ROOT):
        root = V2_ROOT
    path = f"{root}/nvltest-{secrets.token_hex(4)}"
    os.mkdir(path)
    fds = []
    try:
        yield path, fds
    finally:
        for fd in fds:
            os.close(fd)
        _rmdir(path)


def _attach_runtime_program(path, fds):
    """What runc/crun do: a default-deny program allowing /dev/null, ALLOW_MULTI."""
    from nvlaunch.kernel.real import REAL
    prog = bpf.compile_rules([NULL], default_allow=False)
    cg_fd = os.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    fds.append(cg_fd)
    prog_fd = REAL.bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, prog, "Apache", 1 << 16)
    fds.append(prog_fd)
    REAL.bpf_prog_attach(prog_fd, cg_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0)
    return cg_fd


def _attached(cg_fd):
    from nvlaunch.kernel.real import REAL
    return REAL.bpf_prog_query(cg_fd, BPF_CGROUP_DEVICE, 64)


def test_real_v2_prepend_replace_and_undo(v2_cgroup, nodes):
    path, fds = v2_cgroup
    cg_fd = _attach_runtime_program(path, fds)
    flags, (runtime_id,) = _attached(cg_fd)
    assert flags == BPF_F_ALLOW_MULTI
    member = Member(f"{path}/cgroup.procs")
    try:
        assert _probe(member, nodes) == DENIED_GPU
        undo = allow_devices(CgroupTarget(2, path), [GPU0])
        try:
            # The already-running process sees the new policy at once.
            assert _probe(member, nodes) == allowed_gpu(nodes)
            flags, ids = _attached(cg_fd)
            assert flags == BPF_F_ALLOW_MULTI and len(ids) == 1 and ids != [runtime_id]
        finally:
            undo.undo()
        assert _probe(member, nodes) == DENIED_GPU
        assert _attached(cg_fd) == (BPF_F_ALLOW_MULTI, [runtime_id])
    finally:
        member.stop()


def test_real_v2_without_program_changes_nothing(v2_cgroup, nodes):
    path, fds = v2_cgroup
    undo = allow_devices(CgroupTarget(2, path), [GPU0])
    assert undo.changes == []
    undo.close()
    cg_fd = os.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    fds.append(cg_fd)
    assert _attached(cg_fd) == (0, [])


@needs_root("to change cgroups")
def test_real_v2_find_cgroup_of_a_member(v2_cgroup):
    path, _ = v2_cgroup
    member = Member(f"{path}/cgroup.procs")
    try:
        # (on a hybrid host the member is also in the v1 devices root, which restricts
        # nothing: v2 is still the one in force)
        with open(f"/proc/{member.pid}/cgroup") as f:
            assert parse_proc_cgroup(f.read())[0] in (None, "/")
        assert find_cgroup(member.pid) == CgroupTarget(2, path)
    finally:
        member.stop()


@pytest.fixture
def v1_cgroup():
    require_root("to change cgroups")
    root = _mounted("cgroup", "devices")
    if root is None:
        pytest.skip("no cgroup v1 devices controller mounted")
    path = f"{root}/nvltest-{secrets.token_hex(4)}"
    os.mkdir(path)
    try:
        # What a runtime does: deny all, then allow the default devices.
        with open(f"{path}/devices.deny", "w") as f:
            f.write("a")
        for line in ("c 1:3 rwm", "c 195:0 r"):
            with open(f"{path}/devices.allow", "w") as f:
                f.write(line)
        yield path
    finally:
        _rmdir(path)


def _v1_list(path):
    with open(f"{path}/devices.list") as f:
        return sorted(f.read().split("\n"))


def test_real_v1_allow_and_undo(v1_cgroup, nodes):
    path = v1_cgroup
    before = _v1_list(path)
    member = Member(f"{path}/cgroup.procs")
    try:
        assert _probe(member, nodes) == DENIED_GPU      # 195:0 only readable: O_RDWR fails
        target = find_cgroup(member.pid)
        assert target == CgroupTarget(1, path)
        undo = allow_devices(target, [GPU0])
        try:
            assert undo.changes == ["allow c 195:0 w"]   # r was the runtime's already
            assert _probe(member, nodes) == allowed_gpu(nodes)
            assert "c 195:0 rw" in _v1_list(path)
        finally:
            undo.undo()
        assert _probe(member, nodes) == DENIED_GPU
        assert _v1_list(path) == before                  # the runtime's "r" is kept
    finally:
        member.stop()


def test_real_v1_failure_is_reported_and_undone(v1_cgroup):
    # A child may not allow what its parent denies (parent_has_perm(),
    # security/device_cgroup.c): make a child and ask for a device the parent lacks.
    child = f"{v1_cgroup}/inner"
    os.mkdir(child)
    try:
        with open(f"{child}/devices.deny", "w") as f:   # so that 1:3 is a real change
            f.write("c 1:3 w")
        before = _v1_list(child)
        assert "c 1:3 rm" in before
        with pytest.raises(CgroupError) as info:
            allow_devices(CgroupTarget(1, child), [DeviceRule("c", 1, 3, "rw"),
                                                   DeviceRule("c", 195, 7, "rw")])
        assert child in str(info.value) and "Operation not permitted" in str(info.value)
        assert _v1_list(child) == before
    finally:
        _rmdir(child)


@needs_root("to change cgroups")
def test_real_verifier_accepts_our_programs_and_dumps_them_back_unchanged():
    # prepend_rules() relies on the xlated dump of a device filter being loadable as is:
    # cgroup device programs have no ctx rewriting (cg_dev_verifier_ops has no
    # convert_ctx_access, kernel/bpf/cgroup.c), so the dump equals what was loaded.
    from nvlaunch.kernel.real import REAL
    rules = [NULL, DeviceRule("c", 195, None, "rw"), DeviceRule("b", None, None, "m"),
             DeviceRule("c", 195, 1, "rwm", allow=False)]
    first = bpf.compile_rules(rules)
    for prog in (first, bpf.prepend_rules([GPU0], first),
                 bpf.compile_rules([DeviceRule("a", None, None, "rwm")])):
        fd = load_device_program(prog)
        try:
            assert REAL.bpf_prog_xlated_insns(fd) == prog
        finally:
            os.close(fd)


@needs_root("to change cgroups")
def test_real_verifier_reason_is_in_the_error():
    bad = bpf.insn(0xb4, dst=0, imm=1)       # no exit
    with pytest.raises(OSError) as info:
        load_device_program(bad)
    assert info.value.errno == errno.EINVAL
    assert "last insn is not an exit or jmp" in str(info.value)
