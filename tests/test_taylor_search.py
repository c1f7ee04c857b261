"""TaylorMethod.search: plans that keep the best units, hit the parameter target, respect GQA."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.params import count_parameters

EMPTY = torch.empty(0, 0, dtype=torch.long)


def inputs_for(model, ratio, tokens=EMPTY):
    return Inputs(model, tokens, target=Target(params_ratio=ratio))


def method(**cfg):
    """LLM-Pruner's exact cut (``round_to: 1``): these tests check the reference's selection."""
    return create_method(parse_method_config({"name": "llm-pruner", "layer_start": 1,
                                              "round_to": 1, **cfg}))


def plan_for(model, ratio=0.2, **cfg):
    m = method(importance=cfg.pop("importance", "l2"), **cfg)
    scores = m.score(inputs_for(model, ratio), {})
    return scores, m.search(inputs_for(model, ratio), scores)


def removed_by_hand(model, plan):
    """Parameters the plan removes, counted from the dense shapes (no biases in these models)."""
    cfg = model.config
    hidden, d = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    total = 0
    for layer in plan.layers.values():
        if layer.q_heads is not None:
            total += (cfg.num_attention_heads - len(layer.q_heads)) * 2 * d * hidden
            total += (cfg.num_key_value_heads - len(layer.kv_heads)) * 2 * d * hidden
        if layer.mlp_channels is not None:
            total += (cfg.intermediate_size - len(layer.mlp_channels)) * 3 * hidden
    return total


def test_local_plan_keeps_the_best_channels_and_groups_uniformly():
    model = tiny_model("llama", num_hidden_layers=6)
    scores, plan = plan_for(model, head_unit="kv_group")
    assert sorted(plan.layers) == [1, 2, 3]  # default layer_end = num_layers - 2 (exclusive)
    kept_counts = {len(layer.mlp_channels) for layer in plan.layers.values()}
    assert len(kept_counts) == 1  # local: the same keep fraction in every layer
    for i, layer in plan.layers.items():
        ch = scores[f"layers.{i}.channels"]
        dropped = sorted(set(range(96)) - set(layer.mlp_channels))
        assert ch[layer.mlp_channels].min() >= ch[dropped].max()
        if layer.kv_heads is not None:
            heads = scores[f"layers.{i}.heads"]
            lost = sorted(set(range(2)) - set(layer.kv_heads))
            assert heads[layer.kv_heads].min() >= heads[lost].max()
            assert layer.q_heads == [h for g in layer.kv_heads for h in (2 * g, 2 * g + 1)]
    total = count_parameters(model)["total"]
    assert plan.achieved["params_removed_estimate"] == removed_by_hand(model, plan)
    # the closest reachable: one more or one fewer channel in every layer is farther from 20%
    assert abs(plan.achieved["ratio_estimate"] - 0.2) < 3 * 3 * 64 / total


def test_global_plan_uses_one_threshold_across_layers():
    model = tiny_model("llama", num_hidden_layers=6)
    scores, plan = plan_for(model, ranking="global", importance="l1")
    kept, lost = [], []
    for i, layer in plan.layers.items():
        ch = scores[f"layers.{i}.channels"]
        keep = set(layer.mlp_channels or range(96))
        kept += [float(ch[c]) for c in keep]
        lost += [float(ch[c]) for c in range(96) if c not in keep]
    assert lost and max(lost) <= min(kept)
    assert plan.achieved["params_removed_estimate"] == removed_by_hand(model, plan)


def test_query_heads_are_pruned_evenly_within_groups():
    # 6 query heads in 2 KV groups of 3 (SmolLM2's 9/3 in small): a 25% cut keeps 2 per group
    model = tiny_model("llama", num_hidden_layers=6, hidden_size=96, num_attention_heads=6)
    scores, plan = plan_for(model, ratio=0.25, importance="l2")
    layers_with_heads = [i for i, layer in plan.layers.items() if layer.q_heads is not None]
    assert layers_with_heads
    for i in layers_with_heads:
        layer, heads = plan.layers[i], scores[f"layers.{i}.heads"]
        per_group = {g: [h for h in layer.q_heads if h // 3 == g] for g in layer.kv_heads}
        assert len({len(v) for v in per_group.values()}) == 1
        for g, kept in per_group.items():  # each group keeps its best heads
            lost = [h for h in range(3 * g, 3 * g + 3) if h not in kept]
            if lost:
                assert heads[kept].min() >= heads[lost].max()
    assert any("query heads each" in note for note in plan.notes)


def test_channel_scope_keeps_the_best_hidden_dimensions():
    model = tiny_model("llama", num_hidden_layers=2)
    scores, plan = plan_for(model, scope="channel", ratio=0.25)
    kept = plan.hidden_channels
    lost = sorted(set(range(64)) - set(kept))
    assert scores["hidden"][kept].min() >= scores["hidden"][lost].max()
    per_channel = plan.achieved["params_removed_estimate"] / len(lost)
    # embedding + lm_head (vocab 260 each), per layer q,k,v cols + o rows (192) + 3 MLP (288) + 2 norms
    assert per_channel == 2 * 260 + 2 * (64 + 32 + 32 + 64 + 3 * 96 + 2) + 1
    assert not plan.layers


def test_missing_ratio_and_bad_layer_range_are_user_errors():
    model = tiny_model("llama")
    m = method(importance="l1")
    scores = m.score(inputs_for(model, 0.2), {})
    with pytest.raises(UserError, match="target.params_ratio"):
        m.search(inputs_for(model, None), scores)
    with pytest.raises(UserError, match="layer_start=3 / layer_end=2"):
        method(importance="l1", layer_start=3, layer_end=2).score(inputs_for(model, 0.2), {})


def test_unknown_importance_is_rejected_by_the_schema():
    with pytest.raises(ValueError, match="importance"):
        parse_method_config({"name": "taylor", "importance": "element3"})


@pytest.mark.parametrize(("family", "scope"), [("llama", "block"), ("phi3", "block"),
                                             ("qwen2", "channel"), ("gemma2", "channel"),
                                             ("gemma3_text", "block")])
def test_plan_applies_and_removes_the_estimated_parameters(family, scope):
    from prunectl.modeling.surgery import apply_plan

    model = tiny_model(family, num_hidden_layers=5)
    x = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(0))
    m = method(importance="element1", layer_start=1, layer_end=4, scope=scope)
    inputs = inputs_for(model, 0.2, x)
    plan = m.search(inputs, m.score(inputs, {}))
    before = count_parameters(model)["total"]
    pruned = apply_plan(model, plan)
    assert before - count_parameters(pruned)["total"] == plan.achieved["params_removed_estimate"]
    with torch.no_grad():
        assert torch.isfinite(pruned(x).logits).all()
