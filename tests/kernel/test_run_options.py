"""`nvlaunch run` as people use it in scripts, as root and as the unprivileged test user:
host paths through symlinks, the environment rule and --env NAME / --env-file, HOME and
USER for --uid, the host's resolv.conf and hosts, --overlay, a bounded writable layer,
-v and --, docker's --gpus forms, --dry-run that checks and shows, --debug, --bundle."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import needs_root, tree_snapshot

pytestmark = needs_root("switching users, a rootfs owned by root")


def sh(nvl, rootfs, script, *opts, env=None, rc=0):
    proc = nvl("run", *opts, rootfs, "/bin/sh", "-c", script, env=env)
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def one_error(proc) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 125 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("nvlaunch: error: ")
    return lines[0]


def test_rootfs_and_bind_source_through_absolute_symlinks(nvl, rootfs, hostdir):
    """/home -> /var/home, /scratch links: resolved on the host as a shell resolves them."""
    link = os.path.join(hostdir, "rootfs-link")
    os.symlink(rootfs, link)
    data = os.path.join(hostdir, "data")
    os.mkdir(data)
    with open(os.path.join(data, "f"), "w") as f:
        f.write("through-link\n")
    os.chmod(data, 0o755)
    dlink = os.path.join(hostdir, "data-link")
    os.symlink(data, dlink)
    out = sh(nvl, link, "cat /d/f; cat /etc/debian_version", "-v", f"{dlink}:/d:ro").stdout
    assert out.split() == ["through-link", "12.7"]


def test_environment_rule_env_name_and_env_file(nvl, rootfs, hostdir):
    envfile = os.path.join(hostdir, "vars.env")
    with open(envfile, "w") as f:
        f.write("# a comment\n\nFROM_FILE=one two\nQUOTED=\"kept\"\nPASSED_NAME\n")
    os.chmod(envfile, 0o644)
    caller = {"MINE": "from-caller", "PASSED_NAME": "by-name", "TZ": "Europe/Paris",
              "LC_TIME": "C", "SECRET_HOST_VAR": "no", "LD_LIBRARY_PATH": "/host/lib"}
    out = sh(nvl, rootfs, "env", "--env", "MINE", "--env", "UNSET_IN_CALLER",
             "--env-file", envfile, env=caller).stdout
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env["MINE"] == "from-caller" and env["PASSED_NAME"] == "by-name"
    assert env["FROM_FILE"] == "one two" and env["QUOTED"] == '"kept"'     # docker's format
    assert env["TZ"] == "Europe/Paris" and env["LC_TIME"] == "C"          # PASSED_ENV
    for absent in ("UNSET_IN_CALLER", "SECRET_HOST_VAR", "LD_LIBRARY_PATH"):
        assert absent not in env, env


def test_home_and_user_follow_the_uid(nvl, rootfs):
    out = sh(nvl, rootfs, "echo $HOME $USER", "--uid", "1000", "--gid", "1000").stdout.split()
    assert out == ["/home/user", "user"]
    assert sh(nvl, rootfs, "echo $HOME $USER").stdout.split() == ["/root", "root"]
    out = sh(nvl, rootfs, "echo $HOME ${USER-none}", "--uid", "4242").stdout.split()
    assert out == ["/", "none"]                      # not in the rootfs's passwd


def test_resolv_conf_and_hosts(nvl, rootfs):
    out = sh(nvl, rootfs, "cat /etc/resolv.conf; echo ==; cat /etc/hosts").stdout
    resolv, hosts = out.split("==\n")
    for path, got in (("/etc/resolv.conf", resolv), ("/etc/hosts", hosts)):
        if os.path.exists(path):
            with open(path) as f:
                assert got == f.read(), path         # the host's, with --net host
    out = sh(nvl, rootfs, "cat /etc/hosts", "--net", "none", "--hostname", "box").stdout
    assert "localhost" in out and "box" in out
    with open(os.path.join(rootfs, "etc", "hostname")) as f:
        assert f.read() == "probe\n"                 # the rootfs is never written


def test_overlay_keeps_writes_and_leaves_the_rootfs(nvl, rootfs, hostdir):
    tree = tree_snapshot(rootfs)
    over = os.path.join(hostdir, "over")
    sh(nvl, rootfs, "echo kept > /etc/new-file; mkdir -p /data && echo x > /data/y",
       "--overlay", over)
    out = sh(nvl, rootfs, "cat /etc/new-file /data/y", "--overlay", over).stdout
    assert out.split() == ["kept", "x"]
    assert tree_snapshot(rootfs) == tree
    assert os.path.exists(os.path.join(over, "upper", "etc", "new-file"))
    assert "new-file" not in sh(nvl, rootfs, "ls /etc").stdout      # without it: gone
    line = one_error(nvl("run", "--overlay", over, "--readonly", rootfs, "/bin/true"))
    assert "--overlay" in line
    fresh = os.path.join(hostdir, "fresh")      # refused, or only shown: nothing made
    one_error(nvl("run", "--overlay", fresh, "--readonly", rootfs, "/bin/true"))
    assert nvl("run", "--dry-run", "--no-gpu", "--overlay", fresh, rootfs, "/bin/true").returncode == 0
    assert not os.path.exists(fresh)


def test_the_writable_layer_is_bounded(nvl, rootfs):
    proc = sh(nvl, rootfs, "head -c 3000000 /dev/zero > /big; echo rc=$?", "--tmpfs-size", "1m")
    assert "rc=1" in proc.stdout, proc                 # ENOSPC ("I/O error" to busybox head)
    warning = proc.stderr.splitlines()[-1]
    assert warning.startswith("nvlaunch: warning: the container's writable layer is full")
    assert "--tmpfs-size 1m" in warning and "--overlay" in warning
    assert "rc=0" in sh(nvl, rootfs, "head -c 3000000 /dev/zero > /big; echo rc=$?").stdout
    for bad in ("0", "1x", "-5", "²m", ""):
        assert "--tmpfs-size" in one_error(nvl("run", "--tmpfs-size", bad, rootfs, "/bin/true"))


def test_short_forms_and_double_dash(nvl, rootfs, hostdir):
    out = sh(nvl, rootfs, "pwd; echo $K", "-e", "K=v", "-w", "/etc", "-v", f"{hostdir}:/h").stdout
    assert out.split() == ["/etc", "v"]
    proc = nvl("run", "--no-gpu", "--", rootfs, "/bin/echo", "--not-an-option")
    assert proc.returncode == 0 and proc.stdout == "--not-an-option\n", proc.stderr


@pytest.mark.parametrize("spec,want", [("device=1", [1]), ('"device=0,1"', [0, 1]),
                                       ("count=1", [0]), ("count=all", [0, 1])])
def test_docker_gpu_forms(nvl_root, fake, rootfs, spec, want):
    proc = nvl_root("run", "--dry-run", "--gpus", spec, rootfs, "/bin/true", env=fake.env())
    assert proc.returncode == 0, proc.stderr
    devices = [line.split()[1] for line in proc.stdout.splitlines()
               if line.startswith("device") and "/dev/nvidia" in line.split()[1]
               and line.split()[1][len("/dev/nvidia"):].isdigit()]
    by_index = {g.index: g.dev_path for g in fake.gpus}  # minors are not in PCI order
    assert sorted(devices) == sorted(by_index[i] for i in want), proc.stdout


@pytest.mark.parametrize("spec", ["all", "0", "count=2"])
def test_cuda_visible_devices_is_left_alone_outside_an_allocation(nvl_root, fake, rootfs, spec):
    """Renumbering CUDA_VISIBLE_DEVICES is for a scheduler's allocation (docs/cluster.md);
    outside one the container gets the value it was given (it once became "0" for
    --gpus all, hiding every GPU but the first from CUDA)."""
    proc = nvl_root("run", "--dry-run", "--gpus", spec, "--env", "CUDA_VISIBLE_DEVICES=1,0",
                    rootfs, "/bin/true", env=fake.env())
    assert proc.returncode == 0, proc.stderr
    assert "env     CUDA_VISIBLE_DEVICES=1,0" in proc.stdout.splitlines(), proc.stdout


def test_dry_run_checks_and_shows_everything(nvl, rootfs, hostdir):
    line = one_error(nvl("run", "--dry-run", "--bind", "/no/such/src:/x", rootfs, "/bin/true"))
    assert "/no/such/src" in line
    out = nvl("run", "--dry-run", "--no-gpu", "--bind", f"{hostdir}:/x:ro", "--env", "A=1",
              rootfs, "/bin/true")
    assert out.returncode == 0, out.stderr
    assert f"bind    /x  <- {os.path.realpath(hostdir)} (ro)" in out.stdout
    assert "env     A=1" in out.stdout and "command /bin/true" in out.stdout


def test_debug_says_what_it_does(nvl, rootfs):
    proc = nvl("--debug", "run", "--no-gpu", rootfs, "/bin/true")
    assert proc.returncode == 0
    assert "nvlaunch: run[" in proc.stderr and "rootfs" in proc.stderr, proc.stderr


def test_bundle(nvl, rootfs, hostdir):
    bundle = os.path.join(hostdir, "bundle")
    os.mkdir(bundle)
    os.symlink(rootfs, os.path.join(bundle, "rootfs"))
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
              "process": {"args": ["/bin/sh", "-c", "echo $B $(id -u) $(pwd)"],
                          "env": ["PATH=/bin:/usr/bin", "B=from-bundle"], "cwd": "/etc",
                          "user": {"uid": 1000, "gid": 1000}}}
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    os.chmod(bundle, 0o755)
    proc = nvl("run", "--bundle", bundle)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["from-bundle", "1000", "/etc"]
    proc = nvl("run", "--uid", "0", "--bundle", bundle, "/bin/sh", "-c", "id -u")   # CLI wins
    assert proc.stdout.strip() == "0", proc.stderr


def test_a_failure_of_pid_1s_imports_is_one_error_line_after_the_maps(nvl, rootfs):
    """PID 1 imports what it needs while the launcher writes its id maps (exec.pid1
    preload); a failure there is reported where it always was, after the maps, as one
    error line: not as the id-map helpers' failure on a PID 1 that is gone."""
    import shutil
    import tempfile
    shadow = tempfile.mkdtemp(prefix="nvl-shadow-")     # the test user reads it too
    try:
        os.mkdir(os.path.join(shadow, "pyroute2"))
        with open(os.path.join(shadow, "pyroute2", "__init__.py"), "w") as f:
            f.write("raise ImportError('pyroute2 shadowed by the test')\n")
        for p in (shadow, os.path.join(shadow, "pyroute2")):
            os.chmod(p, 0o755)
        os.chmod(os.path.join(shadow, "pyroute2", "__init__.py"), 0o644)
        env = {"PYTHONPATH": f"{shadow}:{nvl.environ()['PYTHONPATH']}"}
        proc = nvl("run", "--no-gpu", "--net", "none", rootfs, "/bin/true", env=env)
    finally:
        shutil.rmtree(shadow)
    line = one_error(proc)
    assert "pyroute2 shadowed by the test" in line, line
    assert "newuidmap" not in line and "newgidmap" not in line
