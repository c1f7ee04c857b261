"""The shared layer-by-layer pass against transformers' own forward (``output_hidden_states``):
every layer's output on every window, every family, uneven batches, a block removed."""

from __future__ import annotations

import pytest
import torch
from helpers import MOE_CONFIGS, layer_states, tiny_model, tiny_moe

from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import LayerPass
from prunectl.modeling.surgery import apply_plan


def pass_outputs(model, ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    adapter = Adapter(model)
    outputs, seen = [], []
    with torch.inference_mode():
        layers = LayerPass(adapter, ids, batch_size)
        for i in range(adapter.num_layers):
            seen.clear()
            layers.advance(i, lambda b, x, y: seen.append((b, y)))
            assert [b for b, _ in seen] == list(range(len(layers.hidden)))
            outputs.append(torch.cat([y for _, y in seen]))
    return outputs


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2",
                                    "gemma3_text", "qwen3_moe", "mixtral"])
def test_layer_outputs_equal_the_models_own_forward(family):
    model = tiny_moe(family, seed=5) if family in MOE_CONFIGS else tiny_model(family, seed=5)
    ids = torch.randint(4, 260, (5, 12), generator=torch.Generator().manual_seed(5))
    for ours, direct in zip(pass_outputs(model, ids, batch_size=2), layer_states(model, ids)[1:],
                            strict=True):
        torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)


def test_a_layer_without_its_attention_block_runs_block_by_block():
    plan = Plan(method="t", layers={1: LayerPlan(attention=False)})
    model = apply_plan(tiny_model("llama", seed=6), plan)
    ids = torch.randint(4, 260, (3, 10), generator=torch.Generator().manual_seed(6))
    assert Adapter(model).attention(1) is None
    for ours, direct in zip(pass_outputs(model, ids, batch_size=3), layer_states(model, ids)[1:],
                            strict=True):
        torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)


def test_block_inputs_are_built_once_per_batch_shape():
    adapter = Adapter(tiny_model("llama"))
    a, b = torch.zeros(2, 8, 64), torch.zeros(1, 8, 64)
    assert adapter.block_inputs(a) is adapter.block_inputs(torch.ones(2, 8, 64))
    assert adapter.block_inputs(b) is not adapter.block_inputs(a)
