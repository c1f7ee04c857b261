"""One meaning of ``head_unit`` and one rounding rule: shares of units round up (LLM-Pruner's and
Torch-Pruning's kept count), ``magnitude`` by default prunes query heads evenly inside every KV
group as Torch-Pruning's LLM example does, and ``taylor`` means the same units."""

from __future__ import annotations

import pytest
from helpers import tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.magnitude import group_importance
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.taylor.selection import LayerCosts
from prunectl.methods.width.units import units_removed
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.structure import from_model


def sq(v):
    return float(v.detach().double().pow(2).sum())


@pytest.mark.parametrize(("n", "ratio", "removed"), [
    (32, 0.25, 8), (11008, 0.25, 2752), (9, 0.25, 3), (4, 0.3, 2), (3, 0.0, 0), (2, 0.99, 1),
    (1, 0.5, 0),
])
def test_shares_of_units_round_up_and_keep_one(n, ratio, removed):
    assert units_removed(n, ratio) == removed


def magnitude_plan(model, **config):
    method = create_method(parse_method_config({"name": "magnitude", "pruning_ratio": 0.3,
                                                "prune_hidden": False, **config}))
    inputs = Inputs(model)
    scores = method.score(inputs, {})
    return scores, method.search(inputs, scores)


def test_magnitude_default_removes_query_heads_evenly_and_keeps_kv_heads():
    """8 query heads in 2 KV groups of 4 at 0.3: ceil(0.3 x 8) = 3 heads, ceil(3 / 2) = 2 from
    each group, the two weakest of each; both KV heads stay."""
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2)
    scores, plan = magnitude_plan(model)
    assert plan.achieved["head_unit"] == "query_head"
    for i, lp in plan.layers.items():
        heads = scores[f"layers.{i}.heads"]
        assert lp.kv_heads == [0, 1] and len(lp.q_heads) == 4
        for g in (0, 1):
            kept = [h for h in lp.q_heads if h // 4 == g]
            lost = [h for h in range(4 * g, 4 * g + 4) if h not in kept]
            assert len(kept) == 2 and heads[kept].min() >= heads[lost].max()


def test_magnitude_kv_group_stays_an_option():
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2)
    _, plan = magnitude_plan(model, head_unit="kv_group")  # ceil(0.3 x 2) = 1 group goes
    assert all(len(lp.kv_heads) == 1 and len(lp.q_heads) == 4 for lp in plan.layers.values())


def test_an_mha_head_scores_by_its_q_k_v_rows_and_o_columns():
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=4)
    a = Adapter(model)
    scores = group_importance(a)
    att, hd = a.attention_weights(2), a.head_dim
    for h in range(4):
        rows = range(h * hd, (h + 1) * hd)
        direct = sum(sq(att.q[r]) + sq(att.k[r]) + sq(att.v[r]) + sq(att.o[:, r])
                     for r in rows) / 4 / hd
        assert scores["layers.2.heads"][h].item() == pytest.approx(direct, rel=1e-5)


def test_taylor_head_units_are_the_same_units():
    """8 query heads in 2 KV groups: query_head units are the 4 slices, kv_group units the 2
    groups; 5 of 8 head scores above a threshold remove 3 heads, ceil(3 / 2) = 2 per group."""
    costs = LayerCosts(from_model(tiny_model("llama", num_attention_heads=8,
                                             num_key_value_heads=2)), 0)
    assert (costs.units("query_head"), costs.units("kv_group")) == (4, 2)
    assert (costs.scored("query_head"), costs.scored("kv_group")) == (8, 2)
    assert costs.units_kept("query_head", 5) == 2 and costs.units_kept("kv_group", 1) == 1
    mha = LayerCosts(from_model(tiny_model("llama", num_key_value_heads=4)), 0)
    assert mha.units("query_head") == mha.units("kv_group") == 4


def test_taylor_global_query_heads_keep_every_kv_group():
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=6)
    method = create_method(parse_method_config({"name": "taylor", "importance": "random",
                                                "ranking": "global", "layer_start": 1}))
    inputs = Inputs(model, target=Target(params_ratio=0.2))
    plan = method.search(inputs, method.score(inputs, {}))
    pruned = [lp for lp in plan.layers.values() if lp.q_heads is not None]
    assert pruned
    for lp in pruned:
        assert lp.kv_heads == [0, 1]
        assert len([h for h in lp.q_heads if h < 4]) == len([h for h in lp.q_heads if h >= 4])
