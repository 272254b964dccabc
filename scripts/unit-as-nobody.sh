#!/bin/bash
# The unit tier as an unprivileged user with no root anywhere (nobody:nogroup, no
# supplementary groups), the way CI runs it: the unit tests must need no root.
#
# The checkout itself may not be readable by nobody, so the working tree (without .git,
# .venv and build outputs, but with the compiled nvlaunch/_ns*.so) is copied into a fresh
# world-readable directory under /tmp and the tests run there, with the venv's python
# (scripts/bootstrap.sh makes .venv world-readable).  TMPDIR and pytest's --basetemp point
# into the same scratch directory, so tmp_path and the fake host's build cache are nobody's
# own, nothing is shared with root's runs, and paths stay short (an AF_UNIX socket path in
# tmp_path must fit in 108 bytes).  Everything is removed afterwards; the exit status is
# pytest's.  Extra arguments go to pytest (e.g. -x, -k NAME, -rs).
#
# Run as root:  bash scripts/unit-as-nobody.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
RUN_USER=${NVL_UNIT_USER:-nobody}
RUN_GROUP=${NVL_UNIT_GROUP:-nogroup}

if [ "$(id -u)" -ne 0 ]; then
  echo "unit-as-nobody: run as root (it switches to $RUN_USER with setpriv)" >&2
  exit 2
fi
[ -x "$PY" ] || { echo "unit-as-nobody: $PY missing: run scripts/bootstrap.sh" >&2; exit 2; }
shopt -s nullglob
so=("$REPO"/nvlaunch/_ns*.so)
shopt -u nullglob
[ ${#so[@]} -gt 0 ] || { echo "unit-as-nobody: nvlaunch/_ns*.so not built: run scripts/bootstrap.sh" >&2; exit 2; }

SCRATCH=$(mktemp -d /tmp/nvlu.XXXXXX)
cleanup() { rm -rf --one-file-system "$SCRATCH"; }
trap cleanup EXIT
chmod 755 "$SCRATCH"
COPY="$SCRATCH/repo"
mkdir "$COPY"
# The working tree as it is (untracked files included), minus what is not source.
tar -C "$REPO" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./.gpu \
    --exclude=./.pytest_cache --exclude=./benchmarks/results \
    --exclude='__pycache__' --exclude='*.egg-info' --exclude='*.pyc' . \
  | tar -C "$COPY" -xf -
# tests find the reference host listing at REPO/../shared/reference (read-only, shared).
if [ -d "$REPO/../shared/reference" ]; then
  mkdir -p "$SCRATCH/shared"
  cp -r "$REPO/../shared/reference" "$SCRATCH/shared/reference"
fi
ls "$COPY"/nvlaunch/_ns*.so >/dev/null
# A checkout the user cannot reach (CI may clone under /root): the venv comes along too.
if ! setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --clear-groups test -x "$PY"; then
  cp -a "$REPO/.venv" "$SCRATCH/venv"
  PY="$SCRATCH/venv/bin/python"
fi
chown -R root:root "$COPY"
chmod -R a+rX,go-w "$SCRATCH"
# nobody's own temporary directory (pytest's tmp_path, tests/fakehost.py's build cache).
mkdir -m 0700 "$SCRATCH/t"
chown "$RUN_USER:$RUN_GROUP" "$SCRATCH/t"

as_user() {
  (cd "$COPY" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME="$SCRATCH/t" \
      TMPDIR="$SCRATCH/t" PYTHONPATH="$COPY" PYTHONDONTWRITEBYTECODE=1 \
      setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --clear-groups "$@")
}

# The copy, not the checkout (which the venv's .pth also names), must be what is imported.
where=$(as_user "$PY" -c 'import nvlaunch, nvlaunch._ns as n; print(n.__file__)')
case "$where" in
  "$COPY"/nvlaunch/*) ;;
  *) echo "unit-as-nobody: nvlaunch._ns came from $where, not from the copy" >&2; exit 2 ;;
esac

set +e
as_user "$PY" -m pytest -q -p no:cacheprovider --basetemp="$SCRATCH/t/p" tests/unit "$@"
rc=$?
set -e
exit $rc
