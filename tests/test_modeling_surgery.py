"""Physical surgery against independent computations on the dense model.

Removing a block must equal running the dense model with that block bypassed; removing heads or
MLP channels must equal zeroing the ``o_proj`` / ``down_proj`` columns they feed (the only path
by which they reach the residual stream).
"""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model
from prunectl.errors import UserError
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.modeling_prunectl import PrunedDecoderLayer
from prunectl.modeling.surgery import apply_plan

FAMILIES = ["llama", "qwen2", "qwen3", "phi3", "mistral", "gemma2", "gemma3_text"]
IDS = torch.randint(4, 260, (2, 11), generator=torch.Generator().manual_seed(1))


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(ids).logits


def bypass_logits(model, removed_attn: set[int], removed_mlp: set[int], ids=IDS):
    """The dense model run block by block through the adapter, skipping the removed blocks."""
    adapter = Adapter(model)
    with torch.inference_mode():
        hidden = adapter.embed_tokens(ids)
        inputs = adapter.block_inputs(hidden)
        for i in range(adapter.num_layers):
            if i not in removed_attn:
                hidden = adapter.attention_block(i, hidden, inputs)
            if i not in removed_mlp:
                hidden = adapter.mlp_block(i, hidden)
        return adapter.logits(hidden)


def zero_columns(model, layer: int, proj: str, columns: list[int]):
    adapter = Adapter(model)
    linear = adapter.o_proj(layer) if proj == "o_proj" else adapter.down_proj(layer)
    with torch.no_grad():
        linear.weight[:, columns] = 0


def head_columns(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in heads for d in range(head_dim)]


BLOCK_PLAN = Plan(
    method="test",
    layers={0: LayerPlan(attention=False), 1: LayerPlan(mlp=False),
            2: LayerPlan(attention=False, mlp=False)},
)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_removal_equals_bypassing_the_blocks(family):
    expected = bypass_logits(tiny_model(family), {0, 2}, {1, 2})
    pruned = apply_plan(tiny_model(family), BLOCK_PLAN)
    close(logits(pruned), expected)
    layers = pruned.model.layers
    assert len(layers) == 3  # layer 2 dropped entirely
    norms = Adapter(pruned).family.norms  # a removed block's norms go with it (Gemma: both)
    assert not hasattr(layers[0], "self_attn")
    assert not any(hasattr(layers[0], name) for name in norms["attention"] if name)
    assert not hasattr(layers[1], "mlp")
    assert not any(hasattr(layers[1], name) for name in norms["mlp"] if name)
    # the cache holds a slot per attention layer: the attention modules are numbered among those
    assert [layers[i].self_attn.layer_idx for i in (1, 2)] == [0, 1]
    assert not any(".0.self_attn" in name for name in pruned.state_dict())


def test_block_removal_matches_for_tied_embeddings():
    expected = bypass_logits(tiny_model("llama", tie_word_embeddings=True), {0, 2}, {1, 2})
    pruned = apply_plan(tiny_model("llama", tie_word_embeddings=True), BLOCK_PLAN)
    close(logits(pruned), expected)
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"])
def test_head_kv_group_and_channel_slicing_equals_zeroed_columns(family):
    # 4 query heads in 2 KV groups (heads 0,1 -> kv 0; heads 2,3 -> kv 1), head_dim 16
    plan = Plan(method="test", layers={
        0: LayerPlan(q_heads=[1, 3]),  # one query head within each group
        1: LayerPlan(kv_heads=[1], mlp_channels=list(range(0, 96, 3))),  # a whole KV group
        3: LayerPlan(q_heads=[2, 3], kv_heads=[1], mlp_channels=[5, 1, 90]),
    })
    dense = tiny_model(family)
    hd = Adapter(dense).head_dim
    zero_columns(dense, 0, "o_proj", head_columns([0, 2], hd))
    zero_columns(dense, 1, "o_proj", head_columns([0, 1], hd))
    zero_columns(dense, 1, "down_proj", [c for c in range(96) if c % 3])
    zero_columns(dense, 3, "o_proj", head_columns([0, 1], hd))
    zero_columns(dense, 3, "down_proj", [c for c in range(96) if c not in (1, 5, 90)])
    pruned = apply_plan(tiny_model(family), plan)
    close(logits(pruned), logits(dense))
    adapter = Adapter(pruned)
    assert [adapter.num_heads(i) for i in range(4)] == [2, 2, 4, 2]
    assert [adapter.num_kv_heads(i) for i in range(4)] == [2, 1, 2, 1]
    assert [adapter.intermediate_size(i) for i in range(4)] == [96, 32, 96, 3]


def test_qwen3_keeps_its_per_head_norms():
    dense = tiny_model("qwen3")
    q_norm = dense.model.layers[0].self_attn.q_norm.weight.clone()
    pruned = apply_plan(dense, Plan(method="t", layers={0: LayerPlan(q_heads=[0, 2])}))
    assert torch.equal(pruned.model.layers[0].self_attn.q_norm.weight, q_norm)


def test_qwen2_qkv_biases_are_sliced_with_their_heads():
    dense = tiny_model("qwen2")
    k_bias = dense.model.layers[0].self_attn.k_proj.bias.clone()
    pruned = apply_plan(dense, Plan(method="t", layers={0: LayerPlan(kv_heads=[1])}))
    assert torch.equal(pruned.model.layers[0].self_attn.k_proj.bias, k_bias[16:32])


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_compensation_biases_are_added_before_slicing(family):
    torch.manual_seed(5)
    o_bias, down_bias = torch.randn(64), torch.randn(64)
    plan = Plan(method="t", layers={
        0: LayerPlan(q_heads=[0, 2]), 2: LayerPlan(mlp_channels=list(range(40)))
    })
    dense = tiny_model(family)
    hd = Adapter(dense).head_dim
    zero_columns(dense, 0, "o_proj", head_columns([1, 3], hd))
    zero_columns(dense, 2, "down_proj", list(range(40, 96)))
    adapter = Adapter(dense)  # the dense model with the biases added to the projections' outputs
    hooks = [adapter.o_proj(0).register_forward_hook(lambda m, i, out: out + o_bias),
             adapter.down_proj(2).register_forward_hook(lambda m, i, out: out + down_bias)]
    expected = logits(dense)
    for hook in hooks:
        hook.remove()
    pruned = apply_plan(tiny_model(family), plan,
                        biases={"layers.0.o_proj": o_bias, "layers.2.down_proj": down_bias})
    close(logits(pruned), expected)
    assert torch.equal(pruned.model.layers[0].self_attn.o_proj.bias, o_bias)


def test_hidden_channel_slicing_shapes_and_bias_slice():
    keep = list(range(0, 64, 4)) + list(range(1, 64, 4)) + list(range(2, 64, 4))  # 48 of 64
    bias = torch.arange(64, dtype=torch.float32)
    plan = Plan(method="t", hidden_channels=keep, layers={1: LayerPlan(q_heads=[0, 1])})
    pruned = apply_plan(tiny_model("qwen2"), plan, biases={"layers.1.o_proj": bias})
    assert pruned.config.hidden_size == 48 and pruned.config.head_dim == 16
    assert pruned.model.embed_tokens.weight.shape == (260, 48)
    assert pruned.lm_head.weight.shape == (260, 48)
    assert pruned.model.layers[1].self_attn.q_proj.weight.shape == (32, 48)
    assert pruned.model.layers[2].mlp.down_proj.weight.shape == (48, 96)
    assert torch.equal(pruned.model.layers[1].self_attn.o_proj.bias, bias[sorted(keep)])
    assert logits(pruned).shape == (2, 11, 260)


def test_uniform_result_is_the_stock_class_with_a_patched_config():
    from transformers import LlamaForCausalLM

    plan = Plan(method="t", layers={
        i: LayerPlan(kv_heads=[i % 2], mlp_channels=list(range(i % 2, 96, 2))) for i in range(4)
    })
    pruned = apply_plan(tiny_model("llama"), plan)
    assert type(pruned) is LlamaForCausalLM
    c = pruned.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (2, 1, 48, 16)
    assert not getattr(c, "is_heterogeneous", False)


def test_heads_that_do_not_divide_hidden_size_use_the_pruned_class():
    """LlamaConfig refuses 3 heads for hidden 64 even with head_dim 16: the pruned config is used."""
    plan = Plan(method="t", layers={i: LayerPlan(q_heads=[0, 1, 3]) for i in range(4)})
    dense = tiny_model("llama", num_key_value_heads=4)
    for i in range(4):
        zero_columns(dense, i, "o_proj", head_columns([2], 16))
    pruned = apply_plan(tiny_model("llama", num_key_value_heads=4), plan)
    assert isinstance(pruned.model.layers[0], PrunedDecoderLayer)
    close(logits(pruned), logits(dense))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (LayerPlan(q_heads=[0, 1, 2]), r"layers\.1 keeps different numbers of query heads per KV group"),
        (LayerPlan(q_heads=[0, 2], kv_heads=[1]), r"layers\.1 keeps query heads of removed KV heads \[0\]"),
        (LayerPlan(q_heads=[0, 7]), r"layers\.1\.q_heads lists index 7 outside 0\.\.3"),
        (LayerPlan(mlp_channels=[-1, 3]), r"layers\.1\.mlp_channels lists index -1 outside 0\.\.95"),
    ],
)
def test_bad_plans_are_user_errors_and_leave_the_model_whole(layer, message):
    model = tiny_model("llama")
    before = logits(model)
    with pytest.raises(UserError, match=message):
        apply_plan(model, Plan(method="t", layers={1: layer}))
    close(logits(model), before)


def test_plan_for_a_missing_layer_is_a_user_error():
    with pytest.raises(UserError, match="the plan names layer 9 but the model has layers 0..3"):
        apply_plan(tiny_model("llama"), Plan(method="t", layers={9: LayerPlan(mlp=False)}))


def test_empty_head_list_removes_the_attention_block():
    pruned = apply_plan(tiny_model("llama"), Plan(method="t", layers={2: LayerPlan(q_heads=[])}))
    close(logits(pruned), bypass_logits(tiny_model("llama"), {2}, set()))


def test_surgery_consumes_the_input_instead_of_copying_it():
    """Every input parameter ends either emptied or shared with the result: never two copies."""
    model = tiny_model("phi3")
    before = list(model.parameters())
    plan = Plan(method="t", hidden_channels=list(range(48)),
                layers={0: LayerPlan(attention=False), 2: LayerPlan(q_heads=[0, 1])})
    pruned = apply_plan(model, plan)
    kept = {p.data_ptr() for p in pruned.parameters()}
    assert all(p.numel() == 0 or p.data_ptr() in kept for p in before)
    assert any(p.numel() == 0 for p in before)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("odd", [[1, 3, 5, 7], [1, 3]])  # 36 channels: stock class; 34: ours
def test_gemma_hidden_slicing_keeps_the_embedding_scale_and_the_tied_head(tmp_path, family, odd):
    """Gemma scales embeddings by sqrt(hidden_size): a narrower model, in memory and reloaded
    with plain transformers, must still embed the kept channels as the dense one did, and its
    tied head must compute, on the kept channels, the final (1 + weight) RMSNorm, the dense head
    rows and the soft-cap."""
    from transformers import AutoModelForCausalLM

    from prunectl.formats.hf import save_model

    keep = sorted(list(range(0, 64, 2)) + odd)  # in the order surgery keeps them
    dense = tiny_model(family)
    with torch.no_grad():
        dense.model.norm.weight.normal_()
    x = torch.randn(2, 11, len(keep), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        embedded = dense.model.embed_tokens(IDS)[..., keep]
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + dense.config.rms_norm_eps)
        expected = (normed * (1 + dense.model.norm.weight[keep])) @ dense.lm_head.weight[:, keep].T
        cap = dense.config.final_logit_softcapping
        expected = expected if cap is None else torch.tanh(expected / cap) * cap
    pruned = apply_plan(dense, Plan(method="t", hidden_channels=keep))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert isinstance(pruned.model.layers[0], PrunedDecoderLayer) == (len(keep) % 4 != 0)
    directory = save_model(pruned, None, tmp_path / "narrow")
    reloaded = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    for model in (pruned, reloaded):
        with torch.inference_mode():
            close(model.model.embed_tokens(IDS), embedded)
            close(Adapter(model).logits(x), expected)
