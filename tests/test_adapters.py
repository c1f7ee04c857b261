"""The adapter's view of each family agrees with the stock model it describes."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILY_CONFIGS, tiny_model

from prunectl.errors import UserError
from prunectl.modeling.adapters import Adapter, family_for

SLIDING = {
    "mistral": {"sliding_window": 8},
    "qwen2": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2},
}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_block_by_block_forward_equals_the_model(family):
    model = tiny_model(family, **SLIDING.get(family, {}))
    adapter = Adapter(model)
    ids = torch.randint(4, 260, (2, 24))  # longer than the sliding windows
    with torch.inference_mode():
        expected = model(ids).logits
        hidden = adapter.embed_tokens(ids)
        inputs = adapter.block_inputs(hidden)
        for i in range(adapter.num_layers):
            hidden = adapter.layer_forward(i, hidden, inputs)
        torch.testing.assert_close(adapter.logits(hidden), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_shapes_and_weight_views(family):
    model = tiny_model(family)
    adapter = Adapter(model)
    config = model.config
    assert adapter.num_heads(0) == config.num_attention_heads
    assert adapter.num_kv_heads(0) == config.num_key_value_heads
    assert adapter.intermediate_size(0) == config.intermediate_size
    weights = adapter.attention_weights(0)
    head_dim = adapter.head_dim
    assert weights.q.shape == (config.num_attention_heads * head_dim, config.hidden_size)
    assert weights.k.shape == weights.v.shape == (config.num_key_value_heads * head_dim,
                                                   config.hidden_size)
    mlp = adapter.mlp_weights(0)
    assert mlp.gate.shape == mlp.up.shape == (config.intermediate_size, config.hidden_size)
    # views share storage with the module's parameters (Phi-3: slices of the fused weights)
    with torch.no_grad():
        weights.k[0, 0] = 123.0
    assert (adapter.attention(0).qkv_proj.weight if family == "phi3"
            else adapter.attention(0).k_proj.weight).flatten().eq(123.0).any()


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(UserError, match="'gpt2' is not supported.*llama.*phi3"):
        family_for("gpt2")
