"""`nvlaunch cdi generate` on a fake host: the spec's shape (checked against the CDI JSON
schema in tests/data/cdi-schema.json), its devices, mounts and hook, the atomic --output,
the YAML form; and the `nvlaunch ldcache` hook's work on a rootfs directory.

Nothing here runs a container (tests/kernel/test_cdi.py does, with podman).  A spec names
device nodes by path only (the runtime stats them), so the fake host here is built with
stand_ins=True: real nodes as root, symlinks to /dev/null (character devices all the same)
without root, and every test runs either way.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.fakehost import DECOY_DRIVER_VERSION, DEFAULT_DRIVER_VERSION, build_fake_host

SCHEMA_PATH = os.path.join(REPO, "tests", "data", "cdi-schema.json")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return build_fake_host(str(tmp_path_factory.mktemp("cdi") / "host"), gpus=2, stand_ins=True)


@pytest.fixture(scope="module")
def spec(fake):
    from nvlaunch.host.view import HostView
    from nvlaunch.oci.hooks import invocation
    from nvlaunch.render.cdi import build_spec
    return build_spec(HostView.from_env(environ=fake.env()), invocation())


def nvl(fake, *args, env=None, umask=None):
    e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO, **fake.env(), **(env or {})}
    pre = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run([sys.executable, "-m", "nvlaunch", *args], capture_output=True,
                          text=True, env=e, timeout=60, cwd="/", preexec_fn=pre)


def validate(doc):
    import jsonschema
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


def device(spec, name):
    found = [d for d in spec["devices"] if d["name"] == name]
    assert len(found) == 1, f"device {name!r}: {len(found)} entries"
    return found[0]["containerEdits"]


# ---------------------------------------------------------------- the spec


def test_schema_rejects_what_the_cdi_loader_rejects():
    """The schema itself is strict where CDI is: unknown fields, bad names, bad hooks."""
    import jsonschema
    good = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}]}
    validate(good)
    bad = [
        {**good, "extra": 1},
        {**good, "kind": "gpu"},
        {**good, "devices": []},
        {**good, "devices": [{"name": "-x", "containerEdits": {}}]},
        {**good, "containerEdits": {"hooks": [{"hookName": "bogus", "path": "/x"}]}},
        {**good, "containerEdits": {"mounts": [{"hostPath": "/a", "containerPath": "rel"}]}},
        {**good, "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]}},
    ]
    for doc in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate(doc)


def test_spec_validates_against_the_cdi_schema(spec):
    validate(spec)
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == "nvidia.com/gpu"


def test_devices_by_index_uuid_and_all(spec, fake):
    names = [d["name"] for d in spec["devices"]]
    want = [str(g.index) for g in fake.gpus] + [g.uuid for g in fake.gpus] + ["all"]
    assert names == want
    for g in fake.gpus:
        for name in (str(g.index), g.uuid):
            nodes = device(spec, name)["deviceNodes"]
            gpu_nodes = [n for n in nodes if n["path"].startswith("/dev/nvidia")]
            # exactly this GPU's node; the minor is not the index (fake minors are 1,0)
            assert gpu_nodes == [{"path": f"/dev/nvidia{g.minor}",
                                  "hostPath": fake.path(f"/dev/nvidia{g.minor}"),
                                  "permissions": "rw"}]
            # its DRM nodes (card/renderD, found through dev/dri/by-path)
            assert {n["path"] for n in nodes} - {gpu_nodes[0]["path"]} == \
                {f"/dev/dri/card{g.index}", f"/dev/dri/renderD{128 + g.index}"}
    all_paths = [n["path"] for n in device(spec, "all")["deviceNodes"]]
    assert len(all_paths) == len(set(all_paths))
    assert {f"/dev/nvidia{g.minor}" for g in fake.gpus} <= set(all_paths)


def test_device_nodes_exist_on_the_host(spec):
    """hostPath names the real node under the dev root; nothing the runtime must stat
    is missing (the runtime fills type/major/minor from it)."""
    edits = [spec["containerEdits"]] + [d["containerEdits"] for d in spec["devices"]]
    for e in edits:
        for n in e.get("deviceNodes", []):
            assert stat.S_ISCHR(os.stat(n.get("hostPath", n["path"])).st_mode), n
            assert "major" not in n and "minor" not in n     # dynamic majors: stat at run time


def test_top_level_edits(spec, fake):
    top = spec["containerEdits"]
    assert top["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert [n["path"] for n in top["deviceNodes"]] == \
        ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    for n in top["deviceNodes"]:
        assert n["hostPath"] == fake.path(n["path"])


def test_mounts_no_duplicates_host_paths_real(spec, fake):
    mounts = spec["containerEdits"]["mounts"]
    dests = [m["containerPath"] for m in mounts]
    srcs = [m["hostPath"] for m in mounts]
    assert len(dests) == len(set(dests)), "a containerPath is mounted twice"
    assert len(srcs) == len(set(srcs)), "a hostPath is mounted twice"
    for d in spec["devices"]:
        assert "mounts" not in d["containerEdits"]
    for m in mounts:
        assert os.path.exists(m["hostPath"]), m
        assert m["hostPath"].startswith(fake.root + "/")     # the real path on this machine
        assert m["options"] == ["ro", "nosuid", "nodev", "bind"]
        assert not m["containerPath"].startswith("/proc/")   # runc refuses those
    # libraries at their host directory, real versioned files only, no CUDA compat decoy
    libcuda = [m for m in mounts if os.path.basename(m["containerPath"]).startswith("libcuda.so")]
    assert [m["containerPath"] for m in libcuda] == \
        [f"/usr/local/nvidia/lib64/libcuda.so.{DEFAULT_DRIVER_VERSION}"]
    assert not any(DECOY_DRIVER_VERSION in m["hostPath"] for m in mounts)
    assert "/usr/bin/nvidia-smi" in dests
    assert any(d.startswith("/lib/firmware/nvidia/") for d in dests)
    # every capability: graphics and video libraries too, as NVIDIA's spec
    names = {os.path.basename(d) for d in dests}
    assert f"libnvidia-encode.so.{DEFAULT_DRIVER_VERSION}" in names
    assert f"libGLX_nvidia.so.{DEFAULT_DRIVER_VERSION}" in names


def test_hook_has_explicit_env_and_the_ldcache_work(spec):
    hooks = spec["containerEdits"]["hooks"]
    assert len(hooks) == 1
    hook = hooks[0]
    assert hook["hookName"] == "createContainer"
    assert os.path.isabs(hook["path"]) and os.access(hook["path"], os.X_OK)
    # CVE-2025-23266: a hook without env inherits the container's (LD_PRELOAD ...)
    env = dict(e.split("=", 1) for e in hook["env"])
    assert env["PATH"].startswith("/")
    assert env.get("PYTHONSAFEPATH") == "1"
    assert not any(k.startswith(("LD_", "NVIDIA_")) for k in env)
    args = hook["args"]
    assert "ldcache" in args
    pairs = [(args[i], args[i + 1]) for i in range(len(args) - 1) if args[i].startswith("--")]
    assert ("--lib", "libcuda.so.1::/usr/local/nvidia/lib64/libcuda.so.1") in pairs
    assert ("--link", f"libcuda.so.{DEFAULT_DRIVER_VERSION}::/usr/local/nvidia/lib64/libcuda.so.1") in pairs
    assert ("--folder", "/usr/local/nvidia/lib64") in pairs
    if "-m" in args:            # `python -m nvlaunch`: cwd (the rootfs) must not be on sys.path
        assert "-P" in args or "-I" in args


def test_hook_path_option(fake):
    from nvlaunch.host.view import HostView
    from nvlaunch.oci.hooks import invocation
    from nvlaunch.render.cdi import build_spec
    spec = build_spec(HostView.from_env(environ=fake.env()), invocation("/usr/local/bin/nvlaunch"))
    hook = spec["containerEdits"]["hooks"][0]
    assert hook["path"] == "/usr/local/bin/nvlaunch"
    assert hook["args"][:2] == ["nvlaunch", "ldcache"]
    assert hook["env"] and not any(e.startswith("PYTHONPATH=") for e in hook["env"])


def test_cli_generate_json_and_yaml_agree(fake):
    import yaml
    j = nvl(fake, "cdi", "generate")
    assert j.returncode == 0, j.stderr
    y = nvl(fake, "cdi", "generate", "--format", "yaml")
    assert y.returncode == 0, y.stderr
    from_yaml = yaml.safe_load(y.stdout)
    assert from_yaml == json.loads(j.stdout)
    validate(from_yaml)


def test_cli_output_is_atomic_and_0644(fake, tmp_path):
    out = tmp_path / "nvidia.json"
    out.write_text("old\n")
    keep = open(out)                       # rename(2): an old reader keeps the old file
    old_ino = os.stat(out).st_ino
    os.chmod(tmp_path, 0o755)
    r = nvl(fake, "cdi", "generate", "--output", str(out), umask=0o077)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert keep.read() == "old\n"
    keep.close()
    st = os.stat(out)
    assert st.st_ino != old_ino
    assert stat.S_IMODE(st.st_mode) == 0o644
    validate(json.loads(out.read_text()))
    assert sorted(os.listdir(tmp_path)) == ["nvidia.json"]      # no temporary left
    # the extension picks the format
    r = nvl(fake, "cdi", "generate", "--output", str(tmp_path / "nvidia.yaml"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "nvidia.yaml").read_text().startswith("---\n")


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    from nvlaunch.core.files import write_atomic
    out = tmp_path / "spec.json"
    out.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(str(out), object())       # fails while writing the temporary
    assert out.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["spec.json"]


def test_cdi_versions(fake):
    r = nvl(fake, "cdi", "generate", "--cdi-version", "0.4.0")
    assert r.returncode == 125
    assert r.stderr.startswith("nvlaunch: error: --cdi-version 0.4.0")
    assert r.stderr.count("\n") == 1
    r = nvl(fake, "cdi", "generate", "--cdi-version", "1.1.0")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["cdiVersion"] == "1.1.0"
    validate(doc)
    assert nvl(fake, "cdi", "generate", "--cdi-version", "banana").returncode == 125
    assert nvl(fake, "cdi", "bogus").returncode == 125


def test_cdi_list(fake):
    r = nvl(fake, "cdi", "list")
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()
    assert names[0] == "nvidia.com/gpu=0" and names[-1] == "nvidia.com/gpu=all"
    assert f"nvidia.com/gpu={fake.gpus[1].uuid}" in names


def test_setup_cdi(fake, tmp_path, capsys, monkeypatch):
    from nvlaunch.setup.cdi import setup_cdi
    for k, v in fake.env().items():
        monkeypatch.setenv(k, v)
    target = tmp_path / "cdi" / "nvidia.json"
    assert setup_cdi(["--cdi", "--output", str(target), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# would write {target}")
    assert not target.exists()
    assert setup_cdi(["--cdi", "--output", str(target)]) == 0
    validate(json.loads(target.read_text()))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_mig_devices(tmp_path):
    """A GPU with MIG instances: one device per MIG device ("G:M"), with the parent's
    node and the GI and CI nvidia-cap nodes (minors from proc/driver/nvidia-caps/mig-minors)."""
    from nvlaunch.host.view import HostView
    from nvlaunch.oci.hooks import invocation
    from nvlaunch.render.cdi import build_spec
    from tests.fakehost import MAJOR_CAPS
    fh = build_fake_host(str(tmp_path / "host"), gpus=2, stand_ins=True)
    gpu = fh.gpus[0]
    minors = dict(line.split() for line in
                  open(fh.path("/proc/driver/nvidia-caps/mig-minors")).read().splitlines())
    base = fh.path(f"/proc/driver/nvidia/capabilities/gpu{gpu.minor}/mig")
    want = []
    for gi, ci in ((1, 0), (2, 0)):
        os.makedirs(f"{base}/gi{gi}/ci{ci}", exist_ok=True)
        caps = []
        for key in (f"gpu{gpu.minor}/gi{gi}/access", f"gpu{gpu.minor}/gi{gi}/ci{ci}/access"):
            minor = int(minors[key])
            fh.add_node(f"/dev/nvidia-caps/nvidia-cap{minor}", MAJOR_CAPS, minor, 0o444)
            open(f"{base}/{key.split('/', 1)[1]}", "a").close()      # the access file
            caps.append(f"/dev/nvidia-caps/nvidia-cap{minor}")
        want.append([f"/dev/nvidia{gpu.minor}"] + caps)
    spec = build_spec(HostView.from_env(environ=fh.env()), invocation())
    validate(spec)
    for m, paths in enumerate(want):
        assert [n["path"] for n in device(spec, f"{gpu.index}:{m}")["deviceNodes"]] == paths
    all_paths = [n["path"] for n in device(spec, "all")["deviceNodes"]]
    assert set(want[0] + want[1]) <= set(all_paths) and len(all_paths) == len(set(all_paths))


# ---------------------------------------------------------------- the ldcache hook


def _rootfs(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("etc", "usr/lib/x86_64-linux-gnu"):
        (root / d).mkdir(parents=True)
    return root


def test_ldcache_hook_links_cache_and_conf(tmp_path):
    from nvlaunch.host import ldcache
    from nvlaunch.exec.ldcache_writer import update_rootfs as apply
    root = _rootfs(tmp_path)
    libdir = root / "usr/local/nvidia/lib64"
    libdir.mkdir(parents=True)
    (libdir / "libcuda.so.580.159.04").write_bytes(b"")
    apply(str(root), [("libcuda.so.580.159.04", "/usr/local/nvidia/lib64/libcuda.so.1")],
          [("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", False)],
          ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu"])
    assert os.readlink(libdir / "libcuda.so.1") == "libcuda.so.580.159.04"
    entries = ldcache.parse((root / "etc/ld.so.cache").read_bytes())
    assert [(e.key, e.value) for e in entries] == [("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1")]
    conf = (root / "etc/ld.so.conf.d/00-nvlaunch.conf").read_text()
    assert "/usr/local/nvidia/lib64\n" in conf
    assert "/usr/lib/x86_64-linux-gnu" not in conf     # a system dir needs no entry
    # again: idempotent
    apply(str(root), [("libcuda.so.580.159.04", "/usr/local/nvidia/lib64/libcuda.so.1")],
          [("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", False)], [])
    assert len(ldcache.parse((root / "etc/ld.so.cache").read_bytes())) == 1


def test_ldcache_hook_stays_inside_the_rootfs(tmp_path):
    """An image whose /usr/local is an absolute symlink to a host path, and whose /etc is
    a relative one climbing out: both resolve inside the rootfs."""
    from nvlaunch.exec.ldcache_writer import update_rootfs as apply
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "rootfs"
    (root / "usr").mkdir(parents=True)
    os.symlink(str(outside), root / "usr/local")
    os.symlink("../../../outside", root / "etc")
    apply(str(root), [("libcuda.so.580.159.04", "/usr/local/nvidia/lib64/libcuda.so.1")],
          [("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", False)],
          ["/usr/local/nvidia/lib64"])
    assert os.listdir(outside) == []
    made = root / str(outside).lstrip("/") / "nvidia/lib64/libcuda.so.1"
    assert os.path.islink(made)
    assert (root / "outside" / "ld.so.cache").exists()


def test_ldcache_hook_reads_the_oci_state(tmp_path):
    from nvlaunch.oci.state import rootfs_of_state as rootfs_from_state
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}}))
    state = {"ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": 1,
             "bundle": str(bundle)}
    assert rootfs_from_state(json.dumps(state)) == str(bundle / "rootfs")
    assert rootfs_from_state(json.dumps({**state, "root": "/crun/root"})) == "/crun/root"
    from nvlaunch.core.errors import UsageError
    for bad in ("", "[]", json.dumps({**state, "bundle": "rel"})):
        with pytest.raises(UsageError):
            rootfs_from_state(bad)


def test_ldcache_hook_refuses_the_host_root():
    from nvlaunch.exec.ldcache_writer import update_rootfs as apply
    from nvlaunch.core.errors import ContainerPathError
    with pytest.raises(ContainerPathError):
        apply("/", [], [("libx.so.1", "/usr/lib/libx.so.1", False)])


def test_ldcache_cli(tmp_path):
    """`nvlaunch ldcache` as a runtime runs it: state on stdin; bad pairs are usage errors."""
    root = _rootfs(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": str(root)}}))
    state = json.dumps({"ociVersion": "1.0.2", "id": "c", "status": "creating", "pid": 1,
                        "bundle": str(bundle)})
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "nvlaunch", "ldcache"]
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, cwd="/")
    if "usage: nvlaunch ldcache" not in r.stdout:
        pytest.fail("`nvlaunch ldcache` does not reach nvlaunch.frontends.ldcache_hook.cmd_ldcache: "
                    "cli.COMMANDS['ldcache'] must be _lazy('nvlaunch.frontends.ldcache_hook', 'cmd_ldcache')\n"
                    + r.stderr)
    r = subprocess.run(cmd + ["--link", "libfoo.so.1.2::/usr/lib/x86_64-linux-gnu/libfoo.so.1",
                              "--lib", "libfoo.so.1::/usr/lib/x86_64-linux-gnu/libfoo.so.1"],
                       input=state, capture_output=True, text=True, env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    assert os.readlink(root / "usr/lib/x86_64-linux-gnu/libfoo.so.1") == "libfoo.so.1.2"
    for bad in (["--link", "nocolons"], ["--lib", "a::relative"], ["--lib", "a/b::/x"]):
        r = subprocess.run(cmd + bad, input=state, capture_output=True, text=True, env=env, cwd="/")
        assert r.returncode == 125 and r.stderr.startswith("nvlaunch: error: ldcache:"), (bad, r.stderr)
