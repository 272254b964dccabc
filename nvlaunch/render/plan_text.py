"""Plans as people and scripts read them: the table of `list` and `run --dry-run`, and
the JSON of `list --json`."""
from __future__ import annotations

from nvlaunch.plan.records import IF_ABSENT, BindDevice, BindDir, BindFile, Symlink, Tmpfs, WriteFile


def plan_json(plan) -> dict:
    out = {"devices": [], "files": [], "links": [], "made": [], "env": dict(plan.env),
           "libdir": plan.libdir, "ldcache": [list(p) for p in plan.ldcache]}
    for e in plan.entries:
        if isinstance(e, BindDevice):
            out["devices"].append({"path": e.dst, "host_path": e.src, "major": e.major, "minor": e.minor})
        elif isinstance(e, (BindFile, BindDir)):
            item = {"path": e.dst, "host_path": e.src, "readonly": e.readonly}
            if e.policy == IF_ABSENT:
                item["only_if_absent"] = True   # a system library the container may have
            out["files"].append(item)
        elif isinstance(e, Symlink):
            out["links"].append({"path": e.link, "target": e.target})
        elif isinstance(e, (WriteFile, Tmpfs)):
            out["made"].append({"path": e.dst, "kind": type(e).__name__.lower()})
    return out


def print_plan(plan, out) -> None:
    if plan.empty:
        out.write("nothing to inject (no GPU requested)\n")
        return
    for e in plan.entries:
        if isinstance(e, BindDevice):
            out.write(f"device  {e.dst}  ({e.major}:{e.minor}, from {e.src})\n")
        elif isinstance(e, (BindFile, BindDir)):
            note = " (only if the container has no such library)" if e.policy == IF_ABSENT else ""
            out.write(f"bind    {e.dst}  <- {e.src}{' (ro)' if e.readonly else ''}{note}\n")
        elif isinstance(e, Symlink):
            out.write(f"link    {e.link} -> {e.target}\n")
        elif isinstance(e, WriteFile):
            out.write(f"file    {e.dst}  ({len(e.data)} bytes)\n")
        elif isinstance(e, Tmpfs):
            out.write(f"tmpfs   {e.dst}\n")
    for soname, path, _ in plan.ldcache:
        out.write(f"ldcache {soname} => {path}\n")
    for k, v in plan.env:
        out.write(f"env     {k}={v}\n")


def print_run(cfg, out) -> None:
    """The rest of what `run` would do, after the plan (`run --dry-run`): `cfg` is the
    exec.runroot.RunConfig it would start."""
    out.write(f"rootfs  {cfg.rootfs}{' (read-only)' if cfg.readonly else ''}\n")
    out.write(f"command {' '.join(cfg.argv)}\n")
    out.write(f"user    {cfg.uid}:{cfg.gid}  workdir {cfg.workdir}  net {cfg.net}\n")
    out.write(f"layer   {('overlay ' + cfg.overlay) if cfg.overlay else 'tmpfs size=' + cfg.tmpfs_size}\n")
    for b in cfg.binds:
        out.write(f"bind    {b.dst}  <- {b.src}{' (ro)' if b.readonly else ''}\n")
    for path, data in cfg.etc_files:
        out.write(f"file    {path}  ({len(data)} bytes)\n")
    for key, value in cfg.defaults + cfg.plan.env + cfg.env:
        out.write(f"env     {key}={value}\n")
