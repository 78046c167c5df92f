#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install sigma_ros with everything its tools and tests need, from scratch.
#   VENV=.venv  PYTHON=python3  bash scripts/setup.sh
# torch: an existing install is kept (GPU users keep their CUDA build); otherwise torch==2.13.0 is installed
# (on the CI machine that is the CPU build from local disk). The ROS 2 Jazzy client libraries come as PyPI wheels
# (ros-jazzy-*) so the node and its tests run without a ROS installation; on a robot, source ROS 2 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  # A fresh environment takes about 2.5 GB (torch's CPU build 0.75, triton 1.0, the rest 0.75; measured on Debian 12,
  # Python 3.11). Say so up front, so that a pip failing half-way with "No space left on device" is explained.
  need_mb=2600
  free_mb=$(df -Pm "$(dirname "$VENV")" | awk 'NR == 2 {print $4}')
  if [ "${free_mb:-0}" -lt "$need_mb" ]; then
    echo "setup.sh: warning: $free_mb MB free under $(cd "$(dirname "$VENV")" && pwd);" \
         "a new $VENV takes about $need_mb MB" >&2
  fi
  "$PYTHON" -m venv "$VENV"
fi
# pip's temporary files (downloads, unpacked sources) on the environment's disk, not a possibly small /tmp
export TMPDIR="$(cd "$VENV" && pwd)/.pip-tmp"
mkdir -p "$TMPDIR"
trap 'rm -rf "$TMPDIR"' EXIT
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${SIGMA_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
python -m pip install -q "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-std-msgs ros-jazzy-diagnostic-msgs
python -c "import sigma_ros, torch; print(f'sigma_ros {sigma_ros.__version__} ready (torch {torch.__version__}) in $VENV')"
