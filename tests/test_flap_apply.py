"""End to end on tiny Llama (GQA), Qwen2 (biases) and Phi-3 (fused): every width method's plan
is sliced, counts what the plan promised, saves, and reloads with the same logits."""

from __future__ import annotations

import pytest
import torch
from helpers import byte_tokenizer, tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.width.units import layer_shape
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.loading import load_project_model
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model

CASES = [
    ("flap", {}),
    ("flap", {"head_unit": "query_head", "metric": "WIFN"}),
    ("flap", {"structure": "UL-MM", "remove_heads": 4}),
    ("wanda-sp", {}),
    ("mag-sp", {"structure": "AL-AM"}),
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma3_text"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_width_plan_applies_saves_and_reloads(tmp_path, family, name, options):
    model = tiny_model(family, num_attention_heads=8, num_key_value_heads=4)
    tokens = torch.randint(4, 260, (6, 32), generator=torch.Generator().manual_seed(3))
    method = create_method(parse_method_config({"name": name, **options}))
    inputs = Inputs(model, tokens, batch_size=4, target=Target(params_ratio=0.3))
    stats = method.statistics(inputs) if method.uses_statistics else {}
    plan = method.search(inputs, method.score(inputs, stats))
    total = count_parameters(model)["total"]
    unit = max(layer_shape(Adapter(model), i, method.config.head_unit).head_unit_cost
               for i in range(4))
    pruned = method.apply(inputs, plan, stats)
    removed = total - count_parameters(pruned)["total"]
    assert removed == plan.achieved["params_removed"]
    if method.config.structure == "AL-AM":  # within one pruning unit of the target
        assert abs(removed - 0.3 * total) <= unit
    save_model(pruned, byte_tokenizer(), tmp_path / "pruned")
    reloaded = load_project_model(tmp_path / "pruned", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, pruned(tokens).logits)


def test_min_kept_zero_may_empty_a_module_and_counts_what_goes(tmp_path):
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=4)
    tokens = torch.randint(4, 260, (6, 32), generator=torch.Generator().manual_seed(4))
    method = create_method(parse_method_config({"name": "flap", "min_kept": 0}))
    inputs = Inputs(model, tokens, batch_size=4, target=Target(params_ratio=0.7))
    stats = method.statistics(inputs)
    scores = method.score(inputs, stats)
    scores["layers.2.heads"] -= 100.0  # make layer 2's heads the weakest by far
    plan = method.search(inputs, scores)
    assert plan.layers[2].attention is False and plan.layers[2].q_heads is None
    assert plan.achieved["query_heads_removed"] >= 8
    total = count_parameters(model)["total"]
    pruned = method.apply(inputs, plan, stats)
    assert total - count_parameters(pruned)["total"] == plan.achieved["params_removed"]
    assert Adapter(pruned).attention(2) is None and Adapter(pruned).mlp(2) is not None
    with torch.no_grad():
        assert torch.isfinite(pruned(tokens).logits).all()
