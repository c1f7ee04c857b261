"""From importance scores to a plan that removes a target fraction of the parameters.

The reference (horseee/LLM-Pruner, ``MetaPruner.prune_local`` / ``prune_global``) takes a channel
sparsity: locally, every pruned layer keeps ``int(n * (1 - sparsity))`` heads and MLP channels;
globally, heads and channels of all pruned layers are pooled and those at or below one threshold
go.  Our target is a fraction of the model's parameters, so the keep fraction (local) or the
threshold (global) is the one whose plan removes the number of parameters closest to the target,
found by bisection over the candidates.  Parameter costs are of the weight matrices (biases, a
rounding error, are left out): the exact counts are measured by ``apply``.

With GQA, standard attention needs the same number of query heads per KV head, so in
``query_head`` mode a layer keeps ``g`` KV groups with ``m`` query heads each: the ``(g, m)``
nearest to the wanted head count (ties: more heads), each group keeping its best ``m`` heads and
the groups ranked by the sum of those.  A group's own ``k``/``v`` rows do not enter that sum.
Every pruned layer keeps at least one head and one MLP channel (the reference's ``max_ch_sparsity``
guard).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from prunectl.methods.plan import LayerPlan
from prunectl.methods.width_common import round_kept_channels
from prunectl.modeling.adapters import Adapter


@dataclass(frozen=True)
class LayerChoice:
    q_heads: list[int]
    kv_heads: list[int]
    channels: list[int]
    removed: int  # parameters


def keep_heads(scores: torch.Tensor, n_heads: int, n_kv: int, head_unit: str, want: int):
    """(kept query heads, kept KV heads), both sorted, for ``want`` units of ``head_unit``."""
    n_rep = n_heads // n_kv
    if head_unit == "kv_group" or n_rep == 1:
        groups = sorted(torch.argsort(scores, descending=True)[:want].tolist())
        return [g * n_rep + j for g in groups for j in range(n_rep)], groups
    per_group = scores.view(n_kv, n_rep)
    options = [(g, m) for g in range(1, n_kv + 1) for m in range(1, n_rep + 1)]
    best = min(abs(g * m - want) for g, m in options)
    kept = max(g * m for g, m in options if abs(g * m - want) == best)
    choices = []
    for g, m in options:
        if g * m != kept:
            continue
        top, idx = per_group.topk(m, dim=1)
        order = torch.argsort(top.sum(1), descending=True)[:g]
        total = float(top.sum(1)[order].sum())
        heads = sorted(int(grp) * n_rep + int(j) for grp in order for j in idx[grp])
        choices.append((total, heads, sorted(order.tolist())))
    _, heads, groups = max(choices, key=lambda c: c[0])
    return heads, groups


class LayerCosts:
    """Shapes and per-unit parameter costs of one layer."""

    def __init__(self, adapter: Adapter, i: int):
        hidden, d = adapter.hidden_size, adapter.head_dim
        self.n_heads, self.n_kv = adapter.num_heads(i), adapter.num_kv_heads(i)
        self.intermediate = adapter.intermediate_size(i)
        self.q_head = 2 * d * hidden  # q rows and o columns
        self.kv_head = 2 * d * hidden  # k and v rows
        self.channel = 3 * hidden  # gate and up rows, down column

    def units(self, head_unit: str) -> int:
        return self.n_heads if head_unit == "query_head" else self.n_kv

    def removed(self, q_kept: int, kv_kept: int, channels_kept: int) -> int:
        return (
            (self.n_heads - q_kept) * self.q_head
            + (self.n_kv - kv_kept) * self.kv_head
            + (self.intermediate - channels_kept) * self.channel
        )


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
    ranking: str, target: int,
) -> tuple[dict[int, LayerChoice], dict]:
    """Per-layer choices removing about ``target`` parameters from heads and MLP channels."""
    costs = {i: LayerCosts(adapter, i) for i in layers}
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

        keep, choices = closest(keeps, evaluate, target)
        return choices, {"ranking": "local", "keep_fraction": keep}
    pooled = torch.cat([torch.cat([heads[i], channels[i]]) for i in layers]).sort().values
    thresholds = [float("-inf"), *pooled.tolist()]

    def evaluate_global(threshold: float) -> dict[int, LayerChoice]:
        return {
            i: choose_layer(
                costs[i], heads[i], channels[i], head_unit,
                int((heads[i] > threshold).sum()), int((channels[i] > threshold).sum()),
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
    costs = {i: LayerCosts(adapter, i) for i in choices}
    channels = {i: scores[f"layers.{i}.channels"].float() for i in choices}
    kept = {i: len(c.channels) for i, c in choices.items()}
    excess = sum(c.removed for c in choices.values()) - target
    rounded = round_kept_channels(
        kept, {i: c.intermediate for i, c in costs.items()}, channels,
        {i: c.channel for i, c in costs.items()}, multiple, excess,
    )
    out = {}
    for i, choice in choices.items():
        k = rounded[i]
        best = sorted(torch.argsort(channels[i], descending=True)[:k].tolist())
        removed = costs[i].removed(len(choice.q_heads), len(choice.kv_heads), k)
        out[i] = choice if k == kept[i] else replace(choice, channels=best, removed=removed)
    return out


def hidden_plan(adapter: Adapter, scores: torch.Tensor, per_channel: int, target: int) -> list[int]:
    """Kept hidden dimensions: the best ``hidden - round(target / per_channel)`` (at least one)."""
    hidden = scores.numel()
    keep = min(max(hidden - round(target / per_channel), 1), hidden)
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

