"""The four structures on random scores: budgets met, GQA layouts valid, weakest units chosen."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.width.selection import LayerScores, select
from prunectl.methods.width.units import head_unit_members, layer_plan, layer_shape
from prunectl.modeling.adapters import Adapter


def random_layers(family: str, head_unit: str, seed: int = 0, **config) -> dict[int, LayerScores]:
    adapter = Adapter(tiny_model(family, **config))
    g = torch.Generator().manual_seed(seed)
    return {
        i: LayerScores(
            layer_shape(adapter, i, head_unit),
            torch.randn(adapter.num_heads(i), generator=g),
            torch.randn(adapter.intermediate_size(i), generator=g),
        )
        for i in range(adapter.num_layers)
    }


def unit_counts(layers):
    return sum(l.shape.num_head_units * l.shape.head_unit_cost
               + l.shape.intermediate * l.shape.channel_cost for l in layers.values())


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("head_unit", ["kv_group", "query_head"])
@pytest.mark.parametrize("share", [0.05, 0.2, 0.35, 0.6])
def test_al_am_lands_within_one_unit_and_removes_the_weakest(family, head_unit, share):
    layers = random_layers(family, head_unit, num_attention_heads=8, num_key_value_heads=2)
    budget = share * unit_counts(layers)
    sel = select("AL-AM", layers, budget)
    largest = max(max(l.shape.head_unit_cost, l.shape.channel_cost) for l in layers.values())
    assert abs(sel.params - budget) <= largest
    # pooled ranking: every removed unit scores at most every kept candidate (ties aside)
    removed, kept = [], []
    for i, l in layers.items():
        for kind, scores, gone in (("h", l.unit_scores, sel.heads.get(i, [])),
                                   ("c", l.channels, sel.channels.get(i, []))):
            protected = int(scores.argmax())  # min_kept=1 keeps the strongest
            for idx in range(len(scores)):
                if idx in gone:
                    removed.append(float(scores[idx]))
                elif idx != protected:
                    kept.append(float(scores[idx]))
    assert removed and max(removed) <= min(kept)
    params = sum(len(v) * layers[i].shape.head_unit_cost for i, v in sel.heads.items()) + sum(
        len(v) * layers[i].shape.channel_cost for i, v in sel.channels.items())
    assert params == sel.params


@pytest.mark.parametrize("head_unit", ["kv_group", "query_head"])
def test_gqa_layouts_keep_equal_query_heads_per_kv_group(head_unit):
    layers = random_layers("llama", head_unit, num_attention_heads=8, num_key_value_heads=2)
    sel = select("AL-AM", layers, 0.5 * unit_counts(layers))
    assert sel.heads, "some heads must go at 50%"
    for i, l in layers.items():
        plan = layer_plan(l.shape, l.heads, sel.heads.get(i, []), sel.channels.get(i, []))
        if plan.q_heads is None:
            continue
        g = l.shape.group_size
        per_group = {k: sum(h // g == k for h in plan.q_heads) for k in plan.kv_heads}
        assert len(set(per_group.values())) == 1 and 0 not in per_group.values()
        assert {h // g for h in plan.q_heads} == set(plan.kv_heads)
        if head_unit == "query_head":
            assert plan.kv_heads == [0, 1]  # slices never drop a KV head
        else:
            assert len(plan.q_heads) == g * len(plan.kv_heads)


def test_query_head_slices_take_the_weakest_head_of_every_group():
    shape = layer_shape(Adapter(tiny_model("llama", hidden_size=96, num_attention_heads=6,
                                                   num_key_value_heads=2)),
                        0, "query_head")
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 9.0, 2.0])  # groups [0,1,2] and [3,4,5]
    assert head_unit_members(shape, scores) == [[1, 3], [2, 5], [0, 4]]


def test_mha_query_head_unit_falls_back_to_whole_heads():
    shape = layer_shape(Adapter(tiny_model("llama", num_key_value_heads=4)), 0, "query_head")
    assert shape.head_unit == "kv_group" and shape.num_head_units == 4


def test_uniform_structures_remove_the_same_counts_in_every_layer():
    layers = random_layers("qwen2", "kv_group", num_attention_heads=8, num_key_value_heads=4)
    budget = 0.3 * unit_counts(layers)
    for structure in ("UL-UM", "UL-MM"):
        sel = select(structure, layers, budget)
        assert len({len(v) for v in sel.channels.values()}) == 1
        assert len(sel.channels) == len(layers)
        assert len({len(sel.heads.get(i, [])) for i in layers}) == 1
        for i, l in layers.items():  # and they are each layer's weakest
            gone = sel.channels[i]
            assert set(gone) == set(torch.argsort(l.channels)[: len(gone)].tolist())
    ul_um = select("UL-UM", layers, budget)
    ratio = len(ul_um.channels[0]) / layers[0].shape.intermediate
    assert len(ul_um.heads.get(0, [])) == int(ratio * layers[0].shape.num_head_units)


def test_mm_structures_remove_exactly_the_requested_heads():
    layers = random_layers("llama", "kv_group", num_attention_heads=8, num_key_value_heads=4)
    budget = 0.3 * unit_counts(layers)
    al = select("AL-MM", layers, budget, remove_heads=5)
    assert sum(len(v) for v in al.heads.values()) == 5
    ul = select("UL-MM", layers, budget, remove_heads=8)
    assert all(len(ul.heads[i]) == 2 for i in layers)
    for sel in (al, ul):
        assert abs(sel.params - budget) <= len(layers) * layers[0].shape.channel_cost


def test_every_layer_keeps_a_unit_and_unreachable_targets_are_refused():
    layers = random_layers("llama", "kv_group")
    reachable = unit_counts(layers) - sum(
        l.shape.head_unit_cost + l.shape.channel_cost for l in layers.values())
    all_but_one = select("AL-AM", layers, reachable)
    for i, l in layers.items():
        assert len(all_but_one.heads[i]) == l.shape.num_head_units - 1
        assert len(all_but_one.channels[i]) == l.shape.intermediate - 1
    with pytest.raises(UserError, match=r"can give at most .* lower target\.params_ratio"):
        select("AL-AM", layers, reachable + 1)
