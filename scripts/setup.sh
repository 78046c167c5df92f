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
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${SIGMA_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
python -m pip install -q "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-std-msgs ros-jazzy-diagnostic-msgs
python -c "import sigma_ros, torch; print(f'sigma_ros {sigma_ros.__version__} ready (torch {torch.__version__}) in $VENV')"
