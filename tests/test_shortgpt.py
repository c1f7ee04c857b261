"""ShortGPT's Block Influence against a direct computation from ``output_hidden_states``, and its
plan: lowest-BI layers first, a nested order that ``plan_for_k`` cuts."""

from __future__ import annotations

import pytest
import torch
from helpers import layer_states, tiny_model

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.removal_order import plan_for_k
from prunectl.methods.shortgpt import block_influence
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import Layers


def direct_bi(model, ids: torch.Tensor) -> torch.Tensor:
    states = layer_states(model, ids)
    cos = torch.nn.functional.cosine_similarity
    return torch.stack([1 - cos(states[i], states[i + 1], dim=-1).mean()
                        for i in range(len(states) - 1)]).double()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_block_influence_matches_hidden_states(family):
    model = tiny_model(family, seed=7, num_hidden_layers=5)
    ids = torch.randint(4, 260, (5, 16), generator=torch.Generator().manual_seed(7))
    bi = block_influence(Layers(Adapter(model), ids, batch_size=2))
    assert bi.shape == (5,)
    torch.testing.assert_close(bi, direct_bi(model, ids), rtol=1e-5, atol=1e-6)


def test_plan_removes_lowest_influence_layers_in_order():
    model = tiny_model("llama", seed=8, num_hidden_layers=5)
    ids = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(8))
    shortgpt = create_method(parse_method_config({"name": "shortgpt", "batch_size": 3}))
    inputs = Inputs(model, ids, target=Target(blocks=2))
    scores = shortgpt.score(inputs, {})
    plan = shortgpt.search(inputs, scores)

    ascending = torch.argsort(direct_bi(model, ids), stable=True).tolist()
    assert plan.removal_order == [f"layers.{i}" for i in ascending]
    assert set(plan.layers) == set(ascending[:2])
    assert all(not (p.attention or p.mlp) for p in plan.layers.values())
    assert plan.achieved["blocks"] == 2
    assert set(plan_for_k(plan, 4).layers) == set(ascending[:4])

    with pytest.raises(UserError, match="no block influence"):
        shortgpt.search(inputs, {"perplexity": torch.ones(3)})
