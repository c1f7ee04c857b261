"""From importance scores to a plan that removes a target fraction of the parameters.

The reference (horseee/LLM-Pruner, ``MetaPruner.prune_local`` / ``prune_global``) takes a channel
sparsity: locally, every pruned layer keeps ``int(n * (1 - sparsity))`` heads and MLP channels;
globally, heads and channels of all pruned layers are pooled and those at or below one threshold
go.  Our target is a fraction of the model's parameters, so the keep fraction (local) or the
threshold (global) is the one whose plan removes the number of parameters closest to the target,
found by bisection over the candidates.  Parameter costs come from the cost model
(:mod:`prunectl.modeling.cost`, biases included), so they are what ``apply`` then measures.

Head units mean what they mean for every method (``methods/width/units.py``): ``kv_group``
keeps whole KV groups; ``query_head`` keeps every KV group with the same number of its best query
heads (a unit is one query head from every group; with MHA, a whole head).  Global ranking counts
query heads above the threshold and removes ``ceil(removed / groups)`` from each group, as
Torch-Pruning does.  Every pruned layer keeps at least one head unit and one MLP channel (the
reference's ``max_ch_sparsity`` guard).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from prunectl.plan import LayerPlan
from prunectl.methods.width.units import round_kept_channels, units_removed
from prunectl.modeling.alignment import snap
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.structure import LayerStructure, Structure, from_model


@dataclass(frozen=True)
class LayerChoice:
    q_heads: list[int]
    kv_heads: list[int]
    channels: list[int]
    removed: int  # parameters


def keep_heads(scores: torch.Tensor, n_heads: int, n_kv: int, head_unit: str, want: int):
    """(kept query heads, kept KV heads), both sorted, for ``want`` units of ``head_unit``:
    the best ``want`` KV groups, or (``query_head``) the best ``want`` query heads of every group."""
    n_rep = n_heads // n_kv
    if head_unit == "kv_group" or n_rep == 1:
        groups = sorted(torch.argsort(scores, descending=True)[:want].tolist())
        return [g * n_rep + j for g in groups for j in range(n_rep)], groups
    top = scores.view(n_kv, n_rep).topk(want, dim=1).indices
    return sorted(g * n_rep + int(j) for g in range(n_kv) for j in top[g]), list(range(n_kv))


class LayerCosts:
    """Shapes of one layer and what keeping fewer heads and channels saves (the cost model)."""

    def __init__(self, structure: Structure, i: int):
        self.structure, self.layer = structure, structure.layers[i]
        self.n_heads, self.n_kv = self.layer.heads, self.layer.kv_heads
        self.intermediate = self.layer.intermediate

    def units(self, head_unit: str) -> int:
        """Head units: KV groups, or (``query_head`` with GQA) query heads per group."""
        n_rep = self.n_heads // self.n_kv
        return n_rep if head_unit == "query_head" and n_rep > 1 else self.n_kv

    def scored(self, head_unit: str) -> int:
        """Head scores: one per query head (``query_head``) or per KV group."""
        return self.n_heads if head_unit == "query_head" else self.n_kv

    def units_kept(self, head_unit: str, scores_kept: int) -> int:
        """Head units kept when ``scores_kept`` head scores clear a threshold; query heads leave
        every group evenly, ``ceil(removed / groups)`` each."""
        if self.units(head_unit) == self.scored(head_unit):
            return scores_kept
        return self.units(head_unit) - units_removed(
            self.units(head_unit), (self.n_heads - scores_kept) / self.n_heads)

    def _params(self, layer: LayerStructure) -> int:
        return cost.attention_parameters(self.structure, layer) + cost.mlp_parameters(
            self.structure, layer)

    def removed(self, q_kept: int, kv_kept: int, channels_kept: int) -> int:
        kept = replace(self.layer, heads=q_kept, kv_heads=kv_kept, intermediate=channels_kept)
        return self._params(self.layer) - self._params(kept)


def choose_layer(
    costs: LayerCosts, heads: torch.Tensor, channels: torch.Tensor, head_unit: str,
    want_heads: int, want_channels: int,
) -> LayerChoice:
    want_heads = min(max(want_heads, 1), costs.units(head_unit))
    want_channels = min(max(want_channels, 1), costs.intermediate)
    q, kv = keep_heads(heads, costs.n_heads, costs.n_kv, head_unit, want_heads)
    kept = sorted(torch.argsort(channels, descending=True)[:want_channels].tolist())
    return LayerChoice(q, kv, kept, costs.removed(len(q), len(kv), len(kept)))


def closest(candidates: Sequence, evaluate: Callable, target: int):
    """The candidate whose removal is closest to ``target``; removal grows along ``candidates``."""
    results: dict[int, object] = {}

    def removed_at(index: int) -> int:
        if index not in results:
            results[index] = evaluate(candidates[index])
        return sum(choice.removed for choice in results[index].values())

    index = bisect.bisect_left(range(len(candidates)), target, key=removed_at)
    index = min(index, len(candidates) - 1)
    if index > 0 and abs(removed_at(index - 1) - target) <= abs(removed_at(index) - target):
        index -= 1
    removed_at(index)
    return candidates[index], results[index]


def block_plan(
    adapter: Adapter, scores: dict[str, torch.Tensor], layers: range, head_unit: str,
    ranking: str, target: int, keep: float | None = None,
) -> tuple[dict[int, LayerChoice], dict]:
    """Per-layer choices removing about ``target`` parameters from heads and MLP channels;
    with local ranking, ``keep`` fixes the kept share of every layer's units instead (the
    reference's ``1 - pruning_ratio``)."""
    structure = from_model(adapter.model)
    costs = {i: LayerCosts(structure, i) for i in layers}
    heads = {i: scores[f"layers.{i}.heads"].float() for i in layers}
    channels = {i: scores[f"layers.{i}.channels"].float() for i in layers}
    if ranking == "local":
        sizes = {n for i in layers for n in (costs[i].units(head_unit), costs[i].intermediate)}
        keeps = sorted({j / n for n in sizes for j in range(n + 1)}, reverse=True)

        def evaluate(keep: float) -> dict[int, LayerChoice]:
            return {
                i: choose_layer(
                    costs[i], heads[i], channels[i], head_unit,
                    int(costs[i].units(head_unit) * keep + 1e-9),
                    int(costs[i].intermediate * keep + 1e-9),
                )
                for i in layers
            }

        if keep is not None:
            return evaluate(keep), {"ranking": "local", "keep_fraction": keep}
        keep, choices = closest(keeps, evaluate, target)
        return choices, {"ranking": "local", "keep_fraction": keep}
    pooled = torch.cat([torch.cat([heads[i], channels[i]]) for i in layers]).sort().values
    thresholds = [float("-inf"), *pooled.tolist()]

    def evaluate_global(threshold: float) -> dict[int, LayerChoice]:
        return {
            i: choose_layer(
                costs[i], heads[i], channels[i], head_unit,
                costs[i].units_kept(head_unit, int((heads[i] > threshold).sum())),
                int((channels[i] > threshold).sum()),
            )
            for i in layers
        }

    threshold, choices = closest(thresholds, evaluate_global, target)
    return choices, {"ranking": "global", "threshold": threshold}


def round_choices(
    adapter: Adapter, choices: dict[int, LayerChoice], scores: dict[str, torch.Tensor],
    multiple: int, target: int,
) -> dict[int, LayerChoice]:
    """``choices`` with kept MLP channels rounded to multiples of ``multiple`` (``round_to``),
    the best-scored channels kept, the removed parameters still closest to ``target``."""
    if multiple == 1:
        return choices
    structure = from_model(adapter.model)
    costs = {i: LayerCosts(structure, i) for i in choices}
    channels = {i: scores[f"layers.{i}.channels"].float() for i in choices}
    kept = {i: len(c.channels) for i, c in choices.items()}
    excess = sum(c.removed for c in choices.values()) - target
    per_channel = {i: c.removed(c.n_heads, c.n_kv, c.intermediate - 1) for i, c in costs.items()}
    rounded = round_kept_channels(
        kept, {i: c.intermediate for i, c in costs.items()}, channels, per_channel, multiple,
        excess,
    )
    out = {}
    for i, choice in choices.items():
        k = rounded[i]
        best = sorted(torch.argsort(channels[i], descending=True)[:k].tolist())
        removed = costs[i].removed(len(choice.q_heads), len(choice.kv_heads), k)
        out[i] = choice if k == kept[i] else replace(choice, channels=best, removed=removed)
    return out


def hidden_plan(adapter: Adapter, scores: torch.Tensor, per_channel: int, target: int,
                multiple: int = 1) -> list[int]:
    """Kept hidden dimensions: the best ``hidden - round(target / per_channel)`` (at least one),
    snapped to ``multiple`` (modeling.alignment)."""
    hidden = scores.numel()
    keep = snap(min(max(hidden - round(target / per_channel), 1), hidden), hidden, multiple)
    return sorted(torch.argsort(scores.float(), descending=True)[:keep].tolist())


def layer_plans(
    adapter: Adapter, choices: dict[int, LayerChoice]
) -> tuple[dict[int, LayerPlan], list[str]]:
    """LayerPlans (``None`` where everything is kept) and notes on GQA rounding."""
    plans, notes = {}, []
    for i, choice in choices.items():
        n_heads, n_kv = adapter.num_heads(i), adapter.num_kv_heads(i)
        n_inter = adapter.intermediate_size(i)
        full_heads = len(choice.q_heads) == n_heads
        plans[i] = LayerPlan(
            q_heads=None if full_heads else choice.q_heads,
            kv_heads=None if full_heads else choice.kv_heads,
            mlp_channels=None if len(choice.channels) == n_inter else choice.channels,
        )
        if not full_heads and n_heads != n_kv:
            notes.append(
                f"layer {i}: keeps {len(choice.kv_heads)} of {n_kv} KV groups with "
                f"{len(choice.q_heads) // len(choice.kv_heads)} of {n_heads // n_kv} query heads each"
            )
    return plans, notes

