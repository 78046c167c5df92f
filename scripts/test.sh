#!/usr/bin/env bash
# Run the tests: set everything up from scratch (scripts/setup.sh), then the whole suite as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
python -m pytest -q -p no:cacheprovider test "$@"
