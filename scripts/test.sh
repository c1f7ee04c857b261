#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${PRUNECTL_VENV:-.venv}/bin/activate"
python -m pytest "$@"
