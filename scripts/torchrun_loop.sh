#!/usr/bin/env bash
# Run every torchrun test N times in a row (default 10), stopping at the first failure, and
# print how long each round and the whole loop took (issue 12: "10 consecutive runs").
#   bash scripts/torchrun_loop.sh [N]
set -euo pipefail
rounds=${1:-10}
cd "$(dirname "$0")/.."
tests=(tests/test_run_distributed.py tests/test_distributed.py tests/test_eval_distributed.py
       tests/test_recover_distributed.py)
start=$(date +%s)
for round in $(seq 1 "$rounds"); do
  began=$(date +%s)
  if ! OMP_NUM_THREADS=1 python -m pytest "${tests[@]}" -q -p no:cacheprovider; then
    echo "round $round of $rounds FAILED after $(( $(date +%s) - start )) s" >&2
    exit 1
  fi
  echo "round $round of $rounds passed in $(( $(date +%s) - began )) s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
done
echo "all $rounds rounds passed in $(( $(date +%s) - start )) s"
