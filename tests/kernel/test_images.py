"""`pull`, `images`, `rmi` on the real kernel: every transport (skopeo makes the OCI forms
from a docker archive written here), a local docker-registry, a registry with bearer
tokens, concurrent and killed pulls, and hostile layers, as root and as nvltest.

Only 127.0.0.1 is ever contacted.  Each hostile layer aims at a specific host path and
the test checks that path afterwards (other workers may change the rest of the host)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time

import pytest

from tests.conftest import require_root
from tests.kernel.conftest import world_dir

pytestmark = pytest.mark.slow

SKOPEO = "/usr/bin/skopeo"
REGISTRY = "/usr/bin/docker-registry"
CONFIG = {"Env": ["PATH=/usr/bin:/bin", "IMG_VAR=from-image", "NVIDIA_VISIBLE_DEVICES=all"],
          "Cmd": ["/bin/sh"], "WorkingDir": "/tmp", "User": "0:0"}


# ---- building images ------------------------------------------------------------------

def tar_of(members) -> bytes:
    """A tar made of (TarInfo, data or None) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tree_layer(root: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(os.listdir(root)):
            t.add(os.path.join(root, name), arcname=name)
    return buf.getvalue()


def member(name, kind=tarfile.REGTYPE, mode=0o644, **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, 1_700_000_000
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def docker_archive(path: str, layers, config=None, tag="test/img:1") -> str:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    cdata = json.dumps({"architecture": "amd64", "os": "linux", "config": config or CONFIG,
                        "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    chex = hashlib.sha256(cdata).hexdigest()
    entries = [(member(chex + ".json"), cdata)]
    names = []
    for i, (d, layer) in enumerate(zip(diff_ids, layers)):
        names.append(f"{i}-{d[7:19]}/layer.tar")
        entries.append((member(names[-1]), layer))
    entries.append((member("manifest.json"),
                    json.dumps([{"Config": chex + ".json", "RepoTags": [tag], "Layers": names}]).encode()))
    with open(path, "wb") as f:
        f.write(tar_of(entries))
    os.chmod(path, 0o644)
    return path


def skopeo(*args):
    r = subprocess.run([SKOPEO, "--insecure-policy", "copy", "-q", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def images():
    """A busybox image in every local form: docker-archive, oci layout, oci-archive."""
    require_root("the fake rootfs and the other users' access")
    if not os.access(SKOPEO, os.X_OK):
        pytest.skip("no skopeo (scripts/bootstrap.sh installs it)")
    from tests.fakehost import build_rootfs
    d = world_dir("nvl-images-")
    root = build_rootfs(os.path.join(d, "rootfs"), probe=False)
    darc = docker_archive(os.path.join(d, "img.tar"), [tree_layer(root)])
    skopeo(f"docker-archive:{darc}", f"oci:{d}/layout:v1")
    skopeo(f"docker-archive:{darc}", f"oci-archive:{d}/img-oci.tar:v2")
    subprocess.run(["chmod", "-R", "a+rX", d], check=True)
    yield {"dir": d, "rootfs": root, "docker-archive": darc, "layout": f"{d}/layout",
           "oci-archive": f"{d}/img-oci.tar"}
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc=None, limit: float = 20) -> None:
    end = time.monotonic() + limit            # a hang guard, not a timed assertion
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the registry exited: {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def registry(images):
    """Debian's distribution registry on 127.0.0.1, holding test/img:1; its port."""
    if not os.access(REGISTRY, os.X_OK):
        pytest.skip("no docker-registry (scripts/bootstrap.sh installs it)")
    d = world_dir("nvl-registry-")
    port = free_port()
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([REGISTRY, "serve", os.path.join(d, "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        skopeo("--dest-tls-verify=false", f"docker-archive:{images['docker-archive']}",
               f"docker://127.0.0.1:{port}/test/img:1")
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


# ---- a registry of our own: bearer tokens, corrupt and stalling blobs --------------------

class FakeRegistry:
    """Serves an OCI layout as test/img:v1, only to a client holding the bearer token."""

    def __init__(self, layout: str):
        self.layout, self.mode = layout, "ok"
        self.stall = threading.Event()
        self.requests: list = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/token"):
                    return self.reply(200, json.dumps({"token": "t0k"}).encode(), "application/json")
                if self.headers.get("Authorization") != "Bearer t0k":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{outer.port}'
                                     '/token",service="fake",scope="repository:test/img:pull"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                parts = self.path.split("/")       # /v2/test/img/{manifests,blobs}/REF
                kind, ref = parts[-2], parts[-1]
                if kind == "manifests" and not ref.startswith("sha256:"):
                    with open(os.path.join(outer.layout, "index.json")) as f:
                        desc = json.load(f)["manifests"][0]
                    ref = desc["digest"]
                path = os.path.join(outer.layout, "blobs", "sha256", ref[7:])
                if not os.path.exists(path):
                    return self.reply(404, b"{}", "application/json")
                with open(path, "rb") as f:
                    data = f.read()
                if kind == "blobs" and len(data) > 100_000:      # the layer
                    if outer.mode == "corrupt":
                        data = data[:-1] + bytes([data[-1] ^ 1])
                    elif outer.mode == "stall":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        outer.stall.wait(30)
                        return None
                ctype = json.loads(data).get("mediaType", "") if kind == "manifests" else "x"
                return self.reply(200, data, ctype)

            def reply(self, code, data, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stall.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry(images):
    reg = FakeRegistry(images["layout"])
    yield reg
    reg.close()


# ---- running nvlaunch with a cache of its own --------------------------------------------

class Puller:
    """nvlaunch (as root or nvltest) with an XDG_CACHE_HOME of its own."""

    def __init__(self, nvl, cache_home: str):
        self.nvl, self.home = nvl, cache_home
        self.root = os.path.join(cache_home, "nvlaunch", "images")
        self.env = {"XDG_CACHE_HOME": cache_home}

    def __call__(self, *args, env=None, timeout=60, input=None):
        return self.nvl(*args, env={**self.env, **(env or {})}, timeout=timeout, input=input)

    def popen(self, *args, **kw):
        return self.nvl.popen(*args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, **kw)

    def pull_ok(self, ref, **kw):
        r = self("pull", ref, **kw)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("sha256:") and len(r.stdout.strip()) == 71
        return r.stdout.strip()

    def listing(self):
        r = self("images", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def tmp_left(self):
        tmp = os.path.join(self.root, "tmp")
        return os.listdir(tmp) if os.path.isdir(tmp) else []

    def trees(self):
        d = os.path.join(self.root, "rootfs")
        return os.listdir(d) if os.path.isdir(d) else []


@pytest.fixture
def puller(nvl):
    d = world_dir("nvl-cache-", 0o755)
    if nvl.user:
        pw = pwd.getpwnam(nvl.user)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    yield Puller(nvl, d)
    subprocess.run(["chmod", "-R", "u+rwX", d], check=False)
    shutil.rmtree(d, ignore_errors=True)


def one_error(r, *words):
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvlaunch: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(p: Puller):
    """A failed pull: no tree, no temporary, no index entry, no blob."""
    assert p.tmp_left() == []
    assert p.trees() == []
    assert p.listing() == []
    blobs = os.path.join(p.root, "blobs", "sha256")
    assert not os.path.isdir(blobs) or os.listdir(blobs) == []


# ---- the transports ------------------------------------------------------------------

REFS = ["docker-archive:{docker-archive}", "docker-archive:{docker-archive}:test/img:1",
        "oci:{layout}:v1", "oci:{layout}", "oci-archive:{oci-archive}:v2"]


@pytest.mark.parametrize("form", REFS)
def test_pull_each_local_transport(images, puller, form):
    ref = form.format(**images)
    digest = puller.pull_ok(ref)
    [entry] = puller.listing()
    assert entry["digest"] == digest and entry["size"] > 1_000_000
    tree = entry["rootfs"]
    assert tree == os.path.join(puller.root, "rootfs", digest[7:])
    src = images["rootfs"]
    for rel in ("bin/busybox", "etc/passwd", "etc/group"):
        with open(os.path.join(src, rel), "rb") as a, open(os.path.join(tree, rel), "rb") as b:
            assert a.read() == b.read(), rel
    assert os.readlink(os.path.join(tree, "bin/sh")) == os.readlink(os.path.join(src, "bin/sh"))
    want_uid = pwd.getpwnam(puller.nvl.user).pw_uid if puller.nvl.user else 0
    assert os.lstat(os.path.join(tree, "bin/busybox")).st_uid == want_uid
    assert os.stat(os.path.join(tree, "bin/busybox")).st_mode & 0o111
    # cached: a second pull is the same image, and resolve() finds it without pulling
    assert puller.pull_ok(ref) == digest
    assert puller.tmp_left() == []


def test_images_table_and_rmi(images, puller):
    a = puller.pull_ok(f"oci:{images['layout']}:v1")
    puller.pull_ok(f"oci-archive:{images['oci-archive']}:v2")    # the same image, another name
    b = puller.pull_ok(f"docker-archive:{images['docker-archive']}")
    r = puller("images")
    assert r.returncode == 0 and r.stdout.startswith("IMAGE") and a[7:19] in r.stdout
    assert len(puller.listing()) == 3 and len(puller.trees()) == 2
    r = puller("rmi", f"oci:{images['layout']}:v1")
    assert r.returncode == 0 and "removed" in r.stdout
    assert len(puller.trees()) == 2                   # still used by the oci-archive name
    assert puller("rmi", f"oci-archive:{images['oci-archive']}:v2").returncode == 0
    assert puller.trees() == [b[7:]]
    assert puller("rmi", b[:15]).returncode == 0      # by digest prefix
    assert_nothing_left(puller)
    one_error(puller("rmi", f"oci:{images['layout']}:v1"), "no such image")


@pytest.mark.parametrize("args, words", [
    (["pull"], ["no IMAGE"]), (["pull", "/srv/rootfs"], ["not an image reference"]),
    (["pull", "oci:/nonexistent-nvl/layout"], ["no such file"]),
    (["pull", "docker-archive:/nonexistent-nvl.tar"], ["no such file"]),
    (["pull", "oci:{layout}:nosuchtag"], ["no image tagged"]),
    (["pull", "docker-archive:{docker-archive}:other/img:9"], ["other/img:9", "in the archive"]),
    (["pull", "oci-archive:{docker-archive}"], ["index.json"]),
    (["pull", "docker-archive:{layout}/index.json"], ["not a tar archive"]),
    (["rmi", "docker://127.0.0.1:1/x:1"], ["no such image"]),
    (["images", "extra"], ["unexpected argument"]),
    (["pull", "--bogus", "x"], ["unknown option"]),
])
def test_bad_pulls_are_one_line(images, puller, args, words):
    one_error(puller(*(a.format(**images) for a in args)), *words)
    assert puller.tmp_left() == [] and puller.trees() == []


@pytest.mark.parametrize("command", ["pull", "images", "rmi"])
def test_help(puller, command):
    r = puller(command, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: nvlaunch {command}")


def test_pull_from_registry(registry, puller):
    ref = f"docker://127.0.0.1:{registry}/test/img:1"
    digest = puller.pull_ok(ref)
    [entry] = puller.listing()
    assert entry["name"] == ref
    assert os.path.isfile(os.path.join(entry["rootfs"], "bin/busybox"))
    # by digest, the same image
    assert puller.pull_ok(f"docker://127.0.0.1:{registry}/test/img@{digest}") == digest
    one_error(puller("pull", f"docker://127.0.0.1:{registry}/test/img:nope"), "not found")
    one_error(puller("pull", f"docker://127.0.0.1:{registry}/test/img@sha256:{'0' * 64}"), "not found")
    assert puller("rmi", ref).returncode == 0
    assert len(puller.listing()) == 1


def test_bearer_token_flow(fake_registry, puller):
    digest = puller.pull_ok(f"docker://127.0.0.1:{fake_registry.port}/test/img:v1")
    paths = [p for p, _ in fake_registry.requests]
    assert any(p.startswith("/token?") and "scope=repository%3Atest%2Fimg%3Apull" in p for p in paths)
    assert all(auth == "Bearer t0k" for p, auth in fake_registry.requests
               if "/blobs/" in p), fake_registry.requests
    assert puller.listing()[0]["digest"] == digest


def test_corrupt_blob_is_refused(fake_registry, puller):
    fake_registry.mode = "corrupt"
    one_error(puller("pull", f"docker://127.0.0.1:{fake_registry.port}/test/img:v1"),
              "does not match its digest")
    assert_nothing_left(puller)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killed_pull_leaves_nothing(fake_registry, puller, how):
    fake_registry.mode = "stall"
    proc = puller.popen("pull", f"docker://127.0.0.1:{fake_registry.port}/test/img:v1")
    try:
        end = time.monotonic() + 30                 # hang guard
        while not puller.tmp_left() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.02)
        assert puller.tmp_left(), "the pull never started its layer"
        time.sleep(0.2)
        os.kill(proc.pid, how)              # setpriv execs python: the same pid
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fake_registry.stall.set()
    if how == signal.SIGTERM:
        assert proc.returncode == 125 and err.count("\n") == 1 and "SIGTERM" in err, err
        assert puller.tmp_left() == []
    assert puller.listing() == []                   # images cleans what SIGKILL left
    assert puller.tmp_left() == [] and puller.trees() == []


def test_concurrent_pulls_share_one_tree(images, puller):
    ref = f"oci:{images['layout']}:v1"
    procs = [puller.popen("pull", ref) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len({o for o, _ in outs}) == 1
    assert len(puller.trees()) == 1 and puller.tmp_left() == []
    assert len(puller.listing()) == 1


# ---- layers -------------------------------------------------------------------------

def pull_layers(p: Puller, d: str, *layers, env=None, config=None):
    arc = docker_archive(os.path.join(d, f"l-{os.urandom(4).hex()}.tar"), list(layers), config)
    return p("pull", f"docker-archive:{arc}", env=env)


@pytest.fixture
def work(puller):
    d = world_dir("nvl-layers-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tree_of(p: Puller) -> str:
    [entry] = p.listing()
    return entry["rootfs"]


def test_whiteouts_apply(puller, work):
    D = tarfile.DIRTYPE
    lower = tar_of([(member("a", D, 0o755), None), (member("a/1"), b"1"), (member("a/2"), b"2"),
                    (member("b"), b"b"), (member("c", D, 0o755), None), (member("c/keep"), b"k")])
    upper = tar_of([(member("a/3"), b"3"), (member("a/.wh..wh..opq"), b""), (member(".wh.b"), b""),
                    (member("c/.wh.nothing"), b"")])
    r = pull_layers(puller, work, lower, upper)
    assert r.returncode == 0, r.stderr
    t = tree_of(puller)
    assert sorted(os.listdir(os.path.join(t, "a"))) == ["3"]
    assert not os.path.lexists(os.path.join(t, "b"))
    assert os.listdir(os.path.join(t, "c")) == ["keep"]
    assert not any(n.startswith(".wh.") for _, ds, fs in os.walk(t) for n in ds + fs)


def test_modes_and_owners(puller, work):
    layer = tar_of([(member("suid", mode=0o4755, uid=1234, gid=5678), b"x"),
                    (member("ro", tarfile.DIRTYPE, 0o555), None), (member("ro/f", mode=0o400), b"f")])
    r = pull_layers(puller, work, layer)
    assert r.returncode == 0, r.stderr
    t = tree_of(puller)
    st = os.lstat(os.path.join(t, "suid"))
    assert os.stat(os.path.join(t, "ro")).st_mode & 0o777 == 0o555
    if puller.nvl.user:
        assert st.st_mode & 0o7777 == 0o755 and st.st_uid == pwd.getpwnam(puller.nvl.user).pw_uid
    else:
        assert st.st_mode & 0o7777 == 0o4755 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert puller("rmi", tree_of(puller).rsplit("/", 1)[1]).returncode == 0     # 0555 dirs too
    assert puller.trees() == []


def test_special_files(puller, work):
    layer = tar_of([(member("dev", tarfile.DIRTYPE, 0o755), None),
                    (member("dev/nvl-null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
                    (member("dev/nvl-blk", tarfile.BLKTYPE, 0o600, devmajor=7, devminor=0), None),
                    (member("fifo", tarfile.FIFOTYPE, 0o644), None), (member("plain"), b"p")])
    r = pull_layers(puller, work, layer, env={"NVLAUNCH_PULL_TIMEOUT": "20"})
    assert r.returncode == 0, r.stderr
    t = tree_of(puller)
    assert os.path.isfile(os.path.join(t, "plain"))
    if puller.nvl.user:      # skipped without root
        assert not os.path.lexists(os.path.join(t, "dev/nvl-null"))
        assert not os.path.lexists(os.path.join(t, "fifo"))
    else:                    # made with mknod inside the tree, never opened
        st = os.lstat(os.path.join(t, "dev/nvl-null"))
        assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
        assert os.path.exists(os.path.join(t, "fifo"))


def host_file(prefix: str) -> str:
    return f"/tmp/{prefix}-{os.urandom(6).hex()}"


def test_links_lead_nowhere_out(puller, work):
    """A link to / (and one climbing with ..) then files and whiteouts through them: all
    land inside the tree; the host paths they aim at stay as they were."""
    target = host_file("nvl-through")
    victim = host_file("nvl-victim")
    with open(victim, "w") as f:
        f.write("keep")
    try:
        lower = tar_of([(member("up", tarfile.SYMTYPE, linkname="/"), None),
                        (member("climb", tarfile.SYMTYPE, linkname="../../../../../../../tmp"), None),
                        (member(target.lstrip("/").replace("tmp/", "up/tmp/", 1)), b"inside"),
                        (member("climb/" + os.path.basename(target) + "-2"), b"inside2")])
        upper = tar_of([(member("climb/.wh." + os.path.basename(victim)), b""),
                        (member("up/tmp/.wh." + os.path.basename(victim)), b"")])
        r = pull_layers(puller, work, lower, upper)
        assert r.returncode == 0, r.stderr
        t = tree_of(puller)
        assert not os.path.lexists(target) and not os.path.lexists(target + "-2")
        with open(os.path.join(t, target.lstrip("/"))) as f:
            assert f.read() == "inside"
        assert os.path.isfile(os.path.join(t, target.lstrip("/") + "-2"))
        with open(victim) as f:
            assert f.read() == "keep"
    finally:
        os.unlink(victim)


def shadow_state():
    st = os.lstat("/etc/shadow")
    return st.st_nlink, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns


@pytest.mark.parametrize("case", ["dotdot", "absolute", "link-abs", "link-dotdot", "link-missing",
                                  "link-dir", "whiteout-dotdot", "whiteout-dot", "huge", "sparse",
                                  "over-total", "pax-bomb", "not-tar", "zstd"])
def test_hostile_layers_are_refused(puller, work, case):
    name = os.path.basename(host_file("nvl-escape"))
    sentinel = os.path.join(puller.root, "x")
    os.makedirs(puller.root, 0o700)
    if puller.nvl.user:                     # the cache is its owner's
        pw = pwd.getpwnam(puller.nvl.user)
        for d in (os.path.dirname(puller.root), puller.root):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    with open(sentinel, "w") as f:
        f.write("keep")
    shadow = shadow_state()
    env = None
    H = tarfile.LNKTYPE
    layer = {
        "dotdot": lambda: tar_of([(member(f"../{name}"), b"x")]),
        "absolute": lambda: tar_of([(member(f"/tmp/{name}"), b"x")]),
        "link-abs": lambda: tar_of([(member("etc", tarfile.DIRTYPE, 0o755), None),
                                    (member("etc/shadow-link", H, linkname="/etc/shadow"), None)]),
        "link-dotdot": lambda: tar_of([(member("s", H, linkname="../../../../../../etc/shadow"), None)]),
        "link-missing": lambda: tar_of([(member("s", H, linkname="etc/shadow"), None)]),
        "link-dir": lambda: tar_of([(member("d", tarfile.DIRTYPE, 0o755), None),
                                    (member("s", H, linkname="d"), None)]),
        "whiteout-dotdot": lambda: tar_of([(member("../../.wh.x"), b"")]),
        "whiteout-dot": lambda: tar_of([(member("d/.wh.."), b"")]),
        "huge": lambda: _header_only(f"{name}", 100 << 30),
        "sparse": lambda: _sparse(name, 1 << 40),
        "over-total": lambda: tar_of([(member("a"), b"a" * 600_000), (member("b"), b"b" * 600_000)]),
        "pax-bomb": lambda: _pax_bomb(),
        "not-tar": lambda: b"\x1f\x8b" + os.urandom(2000),
        "zstd": lambda: b"\x28\xb5\x2f\xfd" + os.urandom(64),
    }[case]()
    if case == "over-total":
        env = {"NVLAUNCH_IMAGE_MAX_BYTES": "1000000"}
    r = pull_layers(puller, work, layer, env=env)
    words = {"dotdot": ["leads out"], "absolute": ["absolute"], "link-abs": ["absolute"],
             "link-dotdot": ["leads out"], "link-missing": ["not in the image"],
             "link-dir": ["directory"], "whiteout-dotdot": ["leads out"], "whiteout-dot": ["names no"],
             "huge": ["NVLAUNCH_IMAGE_MAX_FILE_BYTES"], "sparse": ["NVLAUNCH_IMAGE_MAX_FILE_BYTES"],
             "over-total": ["NVLAUNCH_IMAGE_MAX_BYTES"], "pax-bomb": ["header"],
             "not-tar": ["layer 1"], "zstd": ["zstd"]}[case]
    one_error(r, *words)
    assert not os.path.lexists(f"/tmp/{name}")
    assert not os.path.lexists(os.path.join(os.path.dirname(puller.root), name))
    assert shadow_state() == shadow
    with open(sentinel) as f:
        assert f.read() == "keep"
    os.unlink(sentinel)
    assert_nothing_left(puller)


def _header_only(name: str, size: int) -> bytes:
    ti = member(name)
    ti.size = size
    return ti.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024        # no data: refused before it is read


def _sparse(name: str, realsize: int) -> bytes:
    """A GNU sparse 1.0 member: 512 bytes stored, `realsize` bytes when unpacked."""
    sparse_map = b"1\n0\n512\n".ljust(512, b"\0")
    ti = member(name + ".sparse")
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                      "GNU.sparse.realsize": str(realsize)}
    data = sparse_map + b"z" * 512
    ti.size = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _pax_bomb() -> bytes:
    """A pax header claiming 1 GiB: tarfile would read it whole into memory."""
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 1 << 30
    return ti.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096


def test_decompression_cap_on_gzip_layer(puller, work):
    """A gzip layer that unpacks to more than the cap (its compressed size tiny)."""
    import gzip
    raw = tar_of([(member("zeros"), b"\0" * 3_000_000)])
    r = pull_layers(puller, work, gzip.compress(raw), env={"NVLAUNCH_IMAGE_MAX_BYTES": "2000000"})
    one_error(r, "NVLAUNCH_IMAGE_MAX")
    assert_nothing_left(puller)


# ---- run IMAGE ------------------------------------------------------------------------

def test_run_an_image_as_docker_applies_its_config(images, puller, tmp_path):
    """`run IMAGE` pulls on demand; the image's Env, Cmd and WorkingDir apply, a CMD and
    --env win; its NVIDIA_VISIBLE_DEVICES asks for GPUs as under docker (here, with no
    driver to be found, --no-gpu turns that off)."""
    ref = f"oci:{images['layout']}:v1"
    r = puller("run", "--no-gpu", ref, "/bin/sh", "-c", "echo $IMG_VAR $(pwd) $X", env={"X": "x"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["from-image", "/tmp"]
    r = puller("run", "--no-gpu", "--env", "IMG_VAR=mine", "-w", "/etc", ref, "/bin/sh", "-c",
               "echo $IMG_VAR $(pwd)")
    assert r.stdout.split() == ["mine", "/etc"], r.stderr
    r = puller("run", "--no-gpu", ref, input="echo from-cmd\n")      # Cmd: /bin/sh
    assert r.returncode == 0 and r.stdout == "from-cmd\n", r.stderr
    assert len(puller.listing()) == 1                                 # pulled once, kept
