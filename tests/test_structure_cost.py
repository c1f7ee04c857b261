"""The structure and cost model: counts from weights, configs and plans equal the parameters of
the models they describe, and the KV cache and FLOPs of Llama-2-7B match hand computation."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import FAMILY_CONFIGS, tiny_config, tiny_model

from prunectl.plan import LayerPlan, Plan
from prunectl.modeling import cost, structure
from prunectl.modeling.params import count_parameters
from prunectl.modeling.surgery import apply_plan

LLAMA2_7B = transformers.LlamaConfig(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32)


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
@pytest.mark.parametrize("tied", [False, True])
def test_counts_from_weights_and_config_equal_count_parameters(family, tied):
    model = tiny_model(family, tie_word_embeddings=tied)
    measured = count_parameters(model)
    assert cost.parameters(structure.from_model(model)) == measured
    assert cost.parameters(structure.from_config(tiny_config(family, tie_word_embeddings=tied))) \
        == measured


def test_qwen2_biases_and_qwen3_norms_are_read():
    qwen2 = structure.from_model(tiny_model("qwen2")).layers[0]
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.up_bias, qwen2.down_bias) == (True, False, False,
                                                                             False)
    assert structure.from_model(tiny_model("qwen3")).qk_norm
    assert not structure.from_model(tiny_model("llama")).qk_norm


PLANS = {
    "heads, channels and a removed block": Plan(method="manual", layers={
        0: LayerPlan(q_heads=[0, 1], kv_heads=[0], mlp_channels=list(range(0, 96, 2))),
        2: LayerPlan(attention=False),
        3: LayerPlan(attention=False, mlp=False)}),
    "hidden channels": Plan(method="manual", hidden_channels=list(range(48))),
}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("name", list(PLANS))
def test_a_plan_s_structure_counts_what_surgery_leaves(family, name):
    model = tiny_model(family)
    planned = structure.with_plan(structure.from_model(model), PLANS[name])
    pruned = apply_plan(model, PLANS[name])
    assert cost.parameters(planned) == count_parameters(pruned)
    # the pruned model drops layers that lost both blocks; its own rows are the kept ones
    kept = [row for row in structure.layer_rows(planned) if row["attention"] or row["mlp"]]
    assert [{k: v for k, v in r.items() if k != "layer"} for r in kept] == \
        [{k: v for k, v in r.items() if k != "layer"}
         for r in structure.layer_rows(structure.from_model(pruned))]


def test_compensation_biases_count():
    model = tiny_model("llama")
    plan = Plan(method="flap", layers={1: LayerPlan(mlp_channels=list(range(90)))})
    bias = {"layers.1.down_proj": torch.zeros(64)}
    planned = structure.with_plan(structure.from_model(model), plan, bias)
    assert cost.parameters(planned) == count_parameters(apply_plan(model, plan, biases=bias))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_account_with_gained_biases_counts_what_compensation_leaves(family):
    """The one accounting against surgery with a bias on every narrowed projection: the plan
    narrows layer 0's heads and MLP, empties layer 2's attention (no bias there) and leaves
    layer 1 alone; Qwen2's o_proj has no bias, its q/k/v ones are untouched."""
    model = tiny_model(family)
    dense = structure.from_model(model)
    plan = PLANS["heads, channels and a removed block"]
    assert cost.gained_biases(dense, plan) == ["layers.0.o_proj", "layers.0.down_proj"]
    biases = {name: torch.zeros(64) for name in cost.gained_biases(dense, plan)}
    plain, biased = cost.account(dense, plan), cost.account(dense, plan, biased=True)
    assert biased.params["total"] - plain.params["total"] == 2 * 64
    assert biased.params == count_parameters(apply_plan(model, plan, biases=biases))
    assert (plain.kv_cache_bytes, plain.flops) == (biased.kv_cache_bytes, biased.flops) == (
        cost.kv_cache_bytes_per_token(structure.with_plan(dense, plan)),
        cost.flops_per_token(structure.with_plan(dense, plan)))
    measured = count_parameters(tiny_model(family))
    removed = measured["total"] - biased.params["total"]
    assert biased.achieved(measured) == {
        "params_total": measured["total"], "params_non_embedding": measured["non_embedding"],
        "params_removed": removed, "params_ratio": removed / measured["total"],
        "params_ratio_non_embedding": removed / measured["non_embedding"]}
    assert cost.account(dense).params == measured


def test_llama2_7b_from_its_config():
    """6,738,415,616 parameters; KV cache 2 x 32 layers x 32 heads x 128 x 2 bytes = 512 KiB a
    token in 16-bit; 2 x (6,476,005,376 layer weights + 131,072,000 LM head) FLOPs a token, plus
    2 x 2 x 4096 per layer per token of context."""
    s = structure.from_config(LLAMA2_7B)
    assert cost.parameters(s) == {"total": 6_738_415_616, "non_embedding": 6_476_271_616,
                                  "embedding": 262_144_000}
    assert cost.kv_cache_bytes_per_token(s) == 524_288
    assert cost.kv_cache_bytes_per_token(s, bytes_per_value=4) == 1_048_576
    assert cost.flops_per_token(s) == 2 * (6_476_005_376 + 131_072_000)
    assert cost.flops_per_token(s, context=100) - cost.flops_per_token(s) == 32 * 2 * 2 * 4096 * 100
    assert sum(cost.layer_weights(s, i) for i in range(32)) == 6_476_005_376


def test_kv_cache_shrinks_with_kv_heads_and_removed_attention():
    s = structure.from_model(tiny_model("llama"))  # 4 layers, 2 KV heads of 16
    plan = Plan(method="manual", layers={0: LayerPlan(q_heads=[0, 1], kv_heads=[0]),
                                         1: LayerPlan(attention=False)})
    assert cost.kv_cache_bytes_per_token(s) == 4 * 2 * 2 * 16 * 2
    assert cost.kv_cache_bytes_per_token(structure.with_plan(s, plan)) == (1 + 0 + 2 + 2) * 2 * 16 * 2


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe"])
def test_moe_counts_equal_count_parameters_before_and_after_expert_removal(family):
    """8 routed experts of 32 channels, top-2: each expert holds 3 x 64 x 32 weights and a
    64-weight router row; removing 3 of layer 0 and the MLP block of layer 2 is counted exactly."""
    from helpers import tiny_moe

    model = tiny_moe(family)
    s = structure.from_model(model)
    assert cost.parameters(s) == count_parameters(model)
    assert (s.layers[0].experts, s.layers[0].expert_intermediate, s.top_k) == (8, 32, 2)
    plan = Plan(method="manual", layers={0: LayerPlan(experts=[0, 2, 4, 6, 7]),
                                         2: LayerPlan(mlp=False)})
    planned = structure.with_plan(s, plan)
    assert cost.parameters(s)["total"] - cost.parameters(planned)["total"] == \
        3 * (3 * 64 * 32 + 64) + cost.block_parameters(s, 2)["mlp"]
    assert cost.parameters(planned) == count_parameters(apply_plan(model, plan))
    assert structure.layer_rows(planned)[0]["experts"] == 5
