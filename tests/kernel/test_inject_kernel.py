"""inject.py on the real kernel: read-only binds through in-root fds, and the lesson of the
reference GPU host: a driver tree on a nosuid,nodev (locked) mount must still bind
read-only from inside a user namespace."""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, needs_root

pytestmark = needs_root("mount namespaces, bind mounts, setpriv")

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from nvlaunch.exec.inject import inject
    from nvlaunch.plan.records import Plan, BindFile, Symlink
    lib, root = sys.argv[1], sys.argv[2]
    dst = "/usr/lib/x86_64-linux-gnu/libfake.so.1.2"
    inject(Plan(entries=(BindFile(lib, dst), Symlink("libfake.so.1.2", "/usr/lib/x86_64-linux-gnu/libfake.so.1"))), root)
    st = os.statvfs(root + dst)
    print("flags=%d" % (st.f_flag & 0xf))
    try:
        open(root + dst, "ab")
        print("write=ok")
    except OSError as e:
        print("write=" + e.strerror)
    print("content=" + open(root + "/usr/lib/x86_64-linux-gnu/libfake.so.1").read())
""")


@pytest.fixture
def tree(world_tmp_path):
    lib_dir = os.path.join(world_tmp_path, "driver")
    os.mkdir(lib_dir)
    lib = os.path.join(lib_dir, "libfake.so.1.2")
    with open(lib, "w") as f:
        f.write("driver-bytes")
    root = os.path.join(world_tmp_path, "rootfs")
    os.makedirs(os.path.join(root, "usr/lib"))
    subprocess.run(["chmod", "-R", "a+rwX", world_tmp_path], check=True)
    script = os.path.join(world_tmp_path, "inject.py")
    with open(script, "w") as f:
        f.write(SCRIPT.format(repo=REPO))
    return lib_dir, lib, root, script


def run(args):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_readonly_bind_as_root(tree):
    lib_dir, lib, root, script = tree
    out = run(["unshare", "-m", "--propagation", "private", sys.executable, script, lib, root])
    assert int(out["flags"]) & os.ST_RDONLY
    assert out["write"] == "Read-only file system"
    assert out["content"] == "driver-bytes"


def test_readonly_bind_from_locked_mount_in_user_namespace(tree):
    """The driver directory is a nosuid,nodev,ro mount (like the squashfs at
    /usr/local/nvidia); a user namespace inherits it with those flags locked.  A read-only
    remount that forgot them would fail with EPERM."""
    lib_dir, lib, root, script = tree
    inner = (f"mount --bind {lib_dir} {lib_dir} && "
             f"mount -o remount,bind,ro,nosuid,nodev {lib_dir} && "
             f"setpriv --reuid=nvltest --regid=nvltest --init-groups "
             f"unshare -U -r -m {sys.executable} {script} {lib} {root}")
    out = run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner])
    assert int(out["flags"]) & (os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV) == \
        os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV
    assert out["content"] == "driver-bytes" and out["write"] == "Read-only file system"
    # nothing was left on the host: the mounts died with the namespaces
    with open("/proc/self/mountinfo") as f:
        assert root not in f.read()
