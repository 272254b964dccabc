"""How an image's config applies to a container, as docker applies it (apply_config)."""
from __future__ import annotations

import os

import pytest

from nvlaunch.core.errors import UsageError
from nvlaunch.image.config import Image, ImageConfig, apply_config, config_from_json


def image(tmp_path, passwd=None, group=None, **cfg):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return Image(name="oci:/x:1", digest="sha256:" + "0" * 64, rootfs=str(root), config=ImageConfig(**cfg))


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\nbad:x:z:1::/:/bin/sh\n"
GROUP = "root:x:0:\nvideo:x:44:app\napps:x:1001:\n"


def test_entrypoint_and_cmd(tmp_path):
    img = image(tmp_path, entrypoint=("/bin/tini", "--"), cmd=("serve", "-v"))
    assert apply_config(img, [], [], None, None, None, set())[0] == ["/bin/tini", "--", "serve", "-v"]
    assert apply_config(img, ["sh"], [], None, None, None, set())[0] == ["/bin/tini", "--", "sh"]
    assert apply_config(image(tmp_path, cmd=("a",)), ["b", "c"], [], None, None, None, set())[0] == ["b", "c"]


def test_no_command_at_all_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="no command given"):
        apply_config(image(tmp_path), [], [], None, None, None, set())


def test_env_order_image_then_user(tmp_path):
    img = image(tmp_path, cmd=("x",), env=("PATH=/opt/bin:/bin", "A=img", "NVIDIA_VISIBLE_DEVICES=all",
                                           "NVIDIA_REQUIRE_CUDA=cuda>=12.0", "EMPTY="))
    pairs = [("PATH", "/usr/bin"), ("TERM", "xterm"), ("A", "user"), ("B", "user")]
    _, env, *_ = apply_config(img, [], pairs, None, None, None, {"A", "B"})
    d = dict(env)
    assert d["PATH"] == "/opt/bin:/bin"          # the image's over the launcher's default
    assert d["A"] == "user" and d["B"] == "user"  # --env over the image
    assert d["TERM"] == "xterm" and d["EMPTY"] == ""
    assert d["NVIDIA_VISIBLE_DEVICES"] == "all" and d["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0"
    assert len(env) == len(d)
    # --env NVIDIA_VISIBLE_DEVICES wins over the image's, as under docker
    _, env, *_ = apply_config(img, [], [("NVIDIA_VISIBLE_DEVICES", "0")], None, None, None,
                              {"NVIDIA_VISIBLE_DEVICES"})
    assert dict(env)["NVIDIA_VISIBLE_DEVICES"] == "0"


def test_workdir(tmp_path):
    img = image(tmp_path, cmd=("x",), workdir="/srv")
    assert apply_config(img, [], [], None, None, None, set())[2] == "/srv"
    assert apply_config(img, [], [], "/tmp", None, None, set())[2] == "/tmp"
    assert apply_config(image(tmp_path, cmd=("x",), workdir="rel"), [], [], None, None, None, set())[2] == "/rel"
    assert apply_config(image(tmp_path, cmd=("x",)), [], [], None, None, None, set())[2] == "/"


@pytest.mark.parametrize("user, ids, home", [
    ("", (0, 0), "/root"), ("1000", (1000, 1001), "/home/app"), ("1000:44", (1000, 44), "/home/app"),
    ("app", (1000, 1001), "/home/app"), ("app:video", (1000, 44), "/home/app"),
    ("4242", (4242, 0), None), ("4242:7", (4242, 7), None), ("0:apps", (0, 1001), "/root"),
])
def test_user(tmp_path, user, ids, home):
    img = image(tmp_path, PASSWD, GROUP, cmd=("x",), user=user)
    _, env, _, uid, gid = apply_config(img, [], [], None, None, None, set())
    assert (uid, gid) == ids
    assert dict(env).get("HOME") == home


def test_uid_and_gid_options_win(tmp_path):
    img = image(tmp_path, PASSWD, GROUP, cmd=("x",), user="app:video")
    assert apply_config(img, [], [], None, 5, None, set())[3:] == (5, 0)
    assert apply_config(img, [], [], None, 5, 6, set())[3:] == (5, 6)
    assert apply_config(img, [], [], None, None, 6, set())[3:] == (1000, 6)
    _, env, *_ = apply_config(img, [], [("HOME", "/x")], None, None, None, {"HOME"})
    assert dict(env)["HOME"] == "/x"


@pytest.mark.parametrize("user", ["nobody", "bad", "app:nogroup"])
def test_unknown_names_are_errors(tmp_path, user):
    img = image(tmp_path, PASSWD, GROUP, cmd=("x",), user=user)
    with pytest.raises(UsageError, match="no such"):
        apply_config(img, [], [], None, None, None, set())


def test_names_without_passwd_file(tmp_path):
    img = image(tmp_path, cmd=("x",), user="app")
    with pytest.raises(UsageError, match="no such user"):
        apply_config(img, [], [], None, None, None, set())
    assert apply_config(image(tmp_path, cmd=("x",), user="7"), [], [], None, None, None, set())[3:] == (7, 0)


def test_passwd_is_read_inside_the_rootfs(tmp_path):
    """/etc/passwd a link out of the rootfs: resolved inside it, never the host's."""
    img = image(tmp_path, cmd=("x",), user="root")
    os.symlink("/../../../../etc/nvl-no-such-passwd", os.path.join(img.rootfs, "etc", "passwd"))
    with pytest.raises(UsageError, match="no such user"):
        apply_config(img, [], [], None, None, None, set())


def test_passwd_fifo_is_refused_not_waited_on(tmp_path):
    img = image(tmp_path, cmd=("x",), user="app")
    os.mkfifo(os.path.join(img.rootfs, "etc", "passwd"))
    with pytest.raises(Exception, match="FIFO"):
        apply_config(img, [], [], None, None, None, set())


def test_config_from_json():
    cfg = config_from_json({"config": {"Env": ["A=1"], "Entrypoint": None, "Cmd": ["sh"],
                                       "WorkingDir": "/w", "User": "1:2"}})
    assert cfg == ImageConfig(env=("A=1",), cmd=("sh",), workdir="/w", user="1:2")
    assert config_from_json({"architecture": "amd64"}) == ImageConfig()
    for bad in ({"config": {"Env": [1]}}, {"config": {"Env": ["NOEQUALS"]}}, {"config": [1]}, [],
                {"config": {"User": 5}}):
        with pytest.raises(ValueError):
            config_from_json(bad)
