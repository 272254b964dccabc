#!/bin/bash
# The demo: build a small busybox rootfs and run GPU containers in it, rootless.
# On a host with an NVIDIA driver the real one is used; otherwise a fake driver tree
# (real ELF libraries, a real ld.so.cache, /proc and /dev shaped like an H200 host)
# is built under /var/tmp/nvlaunch-demo and the host roots point there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
DEMO=/var/tmp/nvlaunch-demo
USER_NAME=nvltest
rm -rf "$DEMO"; mkdir -p "$DEMO"; chmod 755 "$DEMO"
"$PY" - "$DEMO" <<'PYEOF'
import os, sys
sys.path.insert(0, os.getcwd())
from tests.fakehost import build_fake_host, build_rootfs
demo = sys.argv[1]
build_rootfs(os.path.join(demo, "rootfs"))
if not os.path.exists("/proc/driver/nvidia/version"):
    build_fake_host(os.path.join(demo, "host"), gpus=2)
PYEOF
chmod -R a+rX "$DEMO"
if [ -d "$DEMO/host" ]; then
  echo "== no NVIDIA driver here: using the fake driver tree in $DEMO/host"
  export NVLAUNCH_DRIVER_ROOT=$DEMO/host NVLAUNCH_DEV_ROOT=$DEMO/host NVLAUNCH_PROC_ROOT=$DEMO/host
fi
RUN_AS=(setpriv "--reuid=$USER_NAME" "--regid=$USER_NAME" --init-groups env "PYTHONPATH=$PWD" HOME=/
        "NVLAUNCH_DRIVER_ROOT=${NVLAUNCH_DRIVER_ROOT:-/}" "NVLAUNCH_DEV_ROOT=${NVLAUNCH_DEV_ROOT:-/}"
        "NVLAUNCH_PROC_ROOT=${NVLAUNCH_PROC_ROOT:-/}")
[ "$(id -u)" = 0 ] || RUN_AS=()
set -x
"${RUN_AS[@]}" "$PY" -m nvlaunch info
"${RUN_AS[@]}" "$PY" -m nvlaunch run "$DEMO/rootfs" /bin/sh -c 'echo "a plain container: $(id)"; hostname'
"${RUN_AS[@]}" "$PY" -m nvlaunch run --gpus all "$DEMO/rootfs" nvidia-smi -L
"${RUN_AS[@]}" "$PY" -m nvlaunch run --gpus 1 "$DEMO/rootfs" /bin/sh -c 'probe devices; probe dlopen libcuda.so.1'
