"""The exact-cut plans ``tests/fixtures/exact_plans.json`` holds, and how to remake them.

The fixture was written by the code before aligned widths became the default (commit 55c21b6):
``git archive 55c21b6 src | tar -x -C /tmp/base && PYTHONPATH=/tmp/base/src:tests python
tests/exact_plans.py tests/fixtures/exact_plans.json``.  ``test_alignment.py`` recomputes every
case with today's code and the ``round_to`` the case names and expects the same plan, bit for bit.
"""

from __future__ import annotations

import json
import sys

import torch
from helpers import tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config

# (case name, family, model overrides, method section, target ratio); round_to is added by the
# caller: 1 (or magnitude's former default 4), which the old code ran as these sections
CASES = [
    ("flap", "llama", {}, {"name": "flap"}, 0.3),
    ("flap-ul-mm", "llama", {}, {"name": "flap", "structure": "UL-MM"}, 0.3),
    ("wanda-sp", "qwen2", {}, {"name": "wanda-sp"}, 0.3),
    ("mag-sp", "phi3", {}, {"name": "mag-sp", "structure": "AL-AM"}, 0.3),
    ("taylor", "llama", {}, {"name": "taylor", "layer_start": 0}, 0.3),
    ("magnitude-4", "llama", {}, {"name": "magnitude"}, 0.3),
    ("magnitude-1", "llama", {}, {"name": "magnitude"}, 0.3),
    ("slimgpt", "llama", {}, {"name": "slimgpt"}, 0.3),
    ("slimgpt-al-am", "qwen2", {}, {"name": "slimgpt", "allocation": "AL-AM"}, 0.3),
]
OLD_DEFAULT = {"magnitude-4": 4}  # magnitude's round_to was 4 before; every other method's 1
MODEL = {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 256}


def plan_for(family: str, overrides: dict, section: dict, ratio: float) -> dict:
    model = tiny_model(family, seed=11, **{**MODEL, **overrides})
    tokens = torch.randint(4, 260, (6, 32), generator=torch.Generator().manual_seed(11))
    method = create_method(parse_method_config(section))
    inputs = Inputs(model, tokens, batch_size=4, target=Target(params_ratio=ratio))
    stats = method.statistics(inputs) if method.uses_statistics else {}
    plan = method.search(inputs, method.score(inputs, stats))
    return json.loads(plan.model_dump_json())


if __name__ == "__main__":
    out = {name: plan_for(family, overrides, section, ratio)
           for name, family, overrides, section, ratio in CASES
           if name != "magnitude-1"}
    # the old magnitude took round_to explicitly
    out["magnitude-1"] = plan_for("llama", {}, {"name": "magnitude", "round_to": 1}, 0.3)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
