#!/usr/bin/env bash
# Run the main job: set everything up from scratch (scripts/setup.sh), then the live demo -- the
# sigma_segmentation node on CPU with the bundled demo checkpoint and a synthetic RGB-thermal camera over ROS 2
# for a bounded time. Writes strips/overlays/labels PNGs and demo.gif to demo_out/ and prints the diagnostics.
#   bash scripts/demo.sh                       # 20 s, 320x240 at 10 Hz
#   bash scripts/demo.sh --duration 60 --out /tmp/demo
#   bash scripts/demo.sh --rgb frame.png --x thermal.png   # one real image pair instead (no ROS needed)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
exec sigma-ros demo "$@"
