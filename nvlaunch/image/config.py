"""An image's config (Env, Entrypoint, Cmd, WorkingDir, User) and how it applies to a
container, as docker applies it.  apply_config is pure but for one read: a User given by
name is looked up in the image's own /etc/passwd and /etc/group, read inside its rootfs
(host.inroot.read_in_root: no link leads out, no FIFO or device is opened)."""
from __future__ import annotations

from nvlaunch.core.argv import ID_MAX, ascii_int
from nvlaunch.core.errors import UsageError, quote
from nvlaunch.core.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable
    from typing import Any


@record
class ImageConfig:
    env: tuple[str, ...] = ()               # "K=V", in order
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""


@record
class Image:
    name: str               # the canonical reference (the cache's key)
    digest: str             # the image manifest's digest (sha256:HEX)
    rootfs: str             # the unpacked tree, a host directory
    config: ImageConfig


def config_from_json(data: Any) -> ImageConfig:
    """The parts of an image config JSON object (OCI image-spec / docker) that apply to a
    container; anything malformed is a ValueError naming the field."""
    if not isinstance(data, dict):
        raise ValueError("the image config is not a JSON object")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise ValueError("config: not an object")

    def strings(key: str) -> tuple[str, ...]:
        val = cfg.get(key)
        if val is None:
            return ()
        if isinstance(val, str):            # docker tolerates a string for Cmd/Entrypoint
            return (val,)
        if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
            raise ValueError(f"config.{key}: not a list of strings")
        return tuple(val)

    def text(key: str) -> str:
        val = cfg.get(key) or ""
        if not isinstance(val, str):
            raise ValueError(f"config.{key}: not a string")
        return val

    env = strings("Env")
    for item in env:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"config.Env: {quote(item)} is not KEY=VALUE")
    return ImageConfig(env=env, entrypoint=strings("Entrypoint"), cmd=strings("Cmd"),
                       workdir=text("WorkingDir"), user=text("User"))


def apply_config(image: Image, argv: list[str], env_pairs: Iterable[tuple[str, str]],
                 workdir_opt: str | None, uid_opt: int | None, gid_opt: int | None,
                 user_env_set: Collection[str]
                 ) -> tuple[list[str], list[tuple[str, str]], str, int, int]:
    """(argv, env, workdir, uid, gid) of a container of `image`, as docker computes them:

    - env: `env_pairs` whose names are not in `user_env_set` (the launcher's defaults),
      then the image's Env over them, then the pairs the user set (`user_env_set`: the
      names given with --env / --env-file) over both; one pair per name, in first-seen
      order.  The image's NVIDIA_* variables arrive here like any other, so a launcher
      that reads NVIDIA_VISIBLE_DEVICES from the env when --gpus is absent acts as
      docker with nvidia's runtime does.  HOME, when nobody set it, is the User's home
      from the image's /etc/passwd.
    - argv: Entrypoint + (the given argv if any, else Cmd); UsageError when empty.
    - workdir: `workdir_opt`, else WorkingDir (made absolute), else "/".
    - uid, gid: `uid_opt` / `gid_opt` win; User "uid[:gid]" or names looked up in the
      image's /etc/passwd and /etc/group; a user without a group takes its passwd group
      (0 for a uid passwd does not list).  With `uid_opt` the image's User is ignored."""
    cfg = image.config
    merged: dict[str, str] = {}
    user_pairs = []
    for key, value in env_pairs:
        if key in user_env_set:
            user_pairs.append((key, value))
        else:
            merged[key] = value
    for item in cfg.env:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in user_pairs:
        merged[key] = value

    cmd = list(argv) if argv else list(cfg.cmd)
    final_argv = list(cfg.entrypoint) + cmd
    if not final_argv:
        raise UsageError(f"{image.name}: no command given and the image has no Entrypoint or Cmd")

    workdir = workdir_opt or cfg.workdir or "/"
    if not workdir.startswith("/"):
        workdir = "/" + workdir

    home = None
    if uid_opt is not None:
        uid, gid = uid_opt, 0 if gid_opt is None else gid_opt
    else:
        uid, gid, home = _user(image, cfg.user)
        if gid_opt is not None:
            gid = gid_opt
    if home and "HOME" not in merged:
        merged["HOME"] = home
    return final_argv, list(merged.items()), workdir, uid, gid


def _user(image: Image, spec: str) -> tuple[int, int, str | None]:
    """(uid, gid, home) of an image's User field."""
    if not spec:
        return 0, 0, _passwd_home(image, 0)
    user, sep, group = spec.partition(":")
    uid = ascii_int(user, ID_MAX)
    entry = None
    if uid is None or not sep:
        entry = _lookup(image, "/etc/passwd", user, 2, 7) if user else None
        if uid is None:
            if entry is None:
                raise UsageError(f"{image.name}: User {quote(user)}: no such user in the image's "
                                 "/etc/passwd")
            uid = int(entry[2])
    gid = 0
    if sep:
        g = ascii_int(group, ID_MAX)
        if g is None:
            gent = _lookup(image, "/etc/group", group, 2, 4)
            if gent is None:
                raise UsageError(f"{image.name}: User {quote(spec)}: no such group {quote(group)} "
                                 "in the image's /etc/group")
            g = int(gent[2])
        gid = g
    elif entry is not None:
        gid = int(entry[3])
    home = entry[5] if entry is not None else _passwd_home(image, uid)
    return uid, gid, home or None


def _passwd_home(image: Image, uid: int) -> str | None:
    entry = _lookup(image, "/etc/passwd", str(uid), 2, 7)
    return entry[5] if entry is not None and entry[5] else None


def _lookup(image: Image, path: str, key: str, id_field: int, nfields: int) -> list[str] | None:
    """The first line of `path` in the image whose name (or, for a number, id) is `key`:
    its fields, checked to have numeric ids.  None if none or the file is missing."""
    from nvlaunch.host.inroot import read_in_root
    data = read_in_root(image.rootfs, path, limit=4 << 20)
    if data is None:
        return None
    by_id = ascii_int(key, ID_MAX) is not None
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) < nfields:
            continue
        if (fields[id_field] if by_id else fields[0]) != key:
            continue
        checks = (2, 3) if nfields == 7 else (2,)
        if any(ascii_int(fields[i], ID_MAX) is None for i in checks):
            continue
        return fields
    return None
