#!/bin/bash
# One-time set-up of a fresh Debian 12 machine for nvlaunch; quick when run again.
#   - Debian packages: build tools, the runtimes the tests drive, busybox, uidmap
#   - a test user (nvltest) with subordinate ids, and a supplementary group (video)
#   - .venv (Debian's python3, so an unprivileged user can run it) with the build
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(gcc make libcap-dev python3-venv python3-dev busybox-static uidmap runc crun podman lxc
      bubblewrap iproute2 util-linux skopeo docker-registry
      docker.io docker-compose containerd slurm-wlm munge)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
id nvltest >/dev/null 2>&1 || useradd -m -s /bin/sh nvltest
getent group video >/dev/null || groupadd -r video
id -nG nvltest | grep -qw video || usermod -aG video nvltest
grep -q '^nvltest:' /etc/subuid 2>/dev/null || echo "nvltest:200000:65536" >> /etc/subuid
grep -q '^nvltest:' /etc/subgid 2>/dev/null || echo "nvltest:200000:65536" >> /etc/subgid
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import Cython, pytest, pyroute2, pynvml, jsonschema, wheel, mypy, hypothesis' 2>/dev/null \
    || [ ! -x .venv/bin/ruff ]; then
  $PY -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # ruff and mypy: `make test` checks the source with them (settings in pyproject.toml)
  .venv/bin/pip install -q 'cython>=3' setuptools wheel pytest pyroute2 nvidia-ml-py jsonschema pyyaml hypothesis \
      ruff==0.17.6 mypy==2.4.1
fi
# Build the extension and the void gate in place (fast when nothing changed).  The venv finds the source
# tree through a plain .pth line, and bin/nvlaunch is copied in with the venv's python:
# an editable pip install would add an import hook that costs ~10 ms per Python start.
if [ ! -f .venv/.nvlaunch-built ] || [ nvlaunch/_ns.pyx -nt .venv/.nvlaunch-built ] || [ nvlaunch/_ns.pxd -nt .venv/.nvlaunch-built ] || [ nvlaunch/_voidgate.c -nt .venv/.nvlaunch-built ] || [ setup.py -nt .venv/.nvlaunch-built ] || ! ls nvlaunch/_ns.*.so >/dev/null 2>&1 || [ ! -x nvlaunch/_voidgate ]; then
  .venv/bin/python setup.py -q build_ext --inplace >/dev/null 2>&1 || .venv/bin/python setup.py build_ext --inplace
  touch .venv/.nvlaunch-built
fi
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$SITE/nvlaunch-dev.pth"
sed "1s|^#!python|#!$PWD/.venv/bin/python -S|" bin/nvlaunch > .venv/bin/nvlaunch
chmod 755 .venv/bin/nvlaunch
# Byte-compile now: an unprivileged user cannot write __pycache__ here, and a stale
# module recompiled on every launch costs milliseconds per container.
.venv/bin/python -m compileall -q nvlaunch >/dev/null
# The launch modules' code in one file (nvlaunch/_bundle.py): ~2 ms of every launch.
.venv/bin/python -c 'from nvlaunch._bundle import build; build("nvlaunch")'
chmod -R a+rX .venv nvlaunch 2>/dev/null || true
