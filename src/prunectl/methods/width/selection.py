"""Which head units and MLP channels go: FLAP's four structures (pure; no model, no I/O).

``UL-UM`` uniform layers, uniform modules: every layer loses the same fraction of head units and
of channels.  ``UL-MM``: every layer loses the same *number* of head units (``remove_heads`` over
the model, split evenly) and of channels (the rest of the budget).  ``AL-MM``: the weakest
``remove_heads`` head units and, separately, the weakest channels model-wide.  ``AL-AM`` (FLAP's
default): head units and channels pooled model-wide by standardised score and cut where the
removed parameters come closest to the budget, each unit weighted by its true parameter cost
(the reference weights a head as ``512/3`` channels, LLaMA-7B's MHA ratio; with GQA and biases the
ratio varies, so costs are computed per layer).

Every budget is a parameter count.  Deviation from the reference: each layer keeps at least
``min_kept`` (by default 1) head units and channels, so no module is emptied unless asked (the
reference can empty one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunectl.errors import UserError
from prunectl.methods.width.units import (
    LayerShape,
    check_round_to,
    head_unit_scores,
    round_kept_channels,
)


@dataclass
class LayerScores:
    shape: LayerShape
    heads: torch.Tensor  # one score per query head
    channels: torch.Tensor  # one score per MLP channel

    @property
    def unit_scores(self) -> torch.Tensor:
        return head_unit_scores(self.shape, self.heads)


@dataclass
class Selection:
    """Removed head units and channels per layer, and the parameters they hold."""

    heads: dict[int, list[int]]
    channels: dict[int, list[int]]
    params: int


def _closest_prefix(costs: list[int], budget: float) -> int:
    """How many leading items (in removal order) bring the removed total closest to ``budget``."""
    total, best_k, best_err = 0, 0, abs(budget)
    for k, cost in enumerate(costs, 1):
        total += cost
        if abs(total - budget) < best_err:
            best_k, best_err = k, abs(total - budget)
    return best_k


def _weakest(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, stable=True)[:k].tolist()) if k > 0 else []


def _candidates(layers: dict[int, LayerScores], min_kept: int, heads: bool, channels: bool):
    """(score, cost, layer, kind, index) of every removable unit; each module's ``min_kept``
    strongest units are not candidates."""
    out = []
    for i, layer in layers.items():
        modules = []
        if heads:
            modules.append(("heads", layer.unit_scores, layer.shape.head_unit_cost))
        if channels:
            modules.append(("channels", layer.channels, layer.shape.channel_cost))
        for kind, scores, cost in modules:
            order = torch.argsort(scores, stable=True).tolist()
            for idx in order[: max(len(order) - min_kept, 0)]:
                out.append((float(scores[idx]), cost, i, kind, idx))
    return out


def _selection(chosen) -> Selection:
    heads: dict[int, list[int]] = {}
    channels: dict[int, list[int]] = {}
    params = 0
    for _score, cost, i, kind, idx in chosen:
        (heads if kind == "heads" else channels).setdefault(i, []).append(idx)
        params += cost
    return Selection({i: sorted(v) for i, v in heads.items()},
                     {i: sorted(v) for i, v in channels.items()}, params)


def _pooled_cut(cands, budget: float) -> Selection:
    cands = sorted(cands, key=lambda c: c[0])  # stable: ties keep layer / module order
    k = _closest_prefix([c[1] for c in cands], budget)
    return _selection(cands[:k])


def check_reachable(layers: dict[int, LayerScores], budget: float, min_kept: int,
                    heads: bool = True, channels: bool = True) -> None:
    reachable = sum(c[1] for c in _candidates(layers, min_kept, heads, channels))
    if budget > reachable:
        raise UserError(
            f"the target removes {budget:,.0f} parameters but heads and MLP channels can give "
            f"at most {reachable:,.0f} (each layer keeps {min_kept} of each); "
            "lower target.params_ratio (or target.params)"
        )


def al_am(layers: dict[int, LayerScores], budget: float, min_kept: int = 1) -> Selection:
    return _pooled_cut(_candidates(layers, min_kept, True, True), budget)


def al_mm(layers: dict[int, LayerScores], budget: float, remove_heads: int,
          min_kept: int = 1) -> Selection:
    heads = sorted(_candidates(layers, min_kept, True, False), key=lambda c: c[0])[:remove_heads]
    head_params = sum(c[1] for c in heads)
    channels = _pooled_cut(_candidates(layers, min_kept, False, True), budget - head_params)
    return Selection(_selection(heads).heads, channels.channels, head_params + channels.params)


def _per_layer(layers: dict[int, LayerScores], head_counts: dict[int, int],
               channel_counts: dict[int, int]) -> Selection:
    chosen_heads, chosen_channels, params = {}, {}, 0
    for i, layer in layers.items():
        h, c = head_counts.get(i, 0), channel_counts.get(i, 0)
        if h:
            chosen_heads[i] = _weakest(layer.unit_scores, h)
        if c:
            chosen_channels[i] = _weakest(layer.channels, c)
        params += h * layer.shape.head_unit_cost + c * layer.shape.channel_cost
    return Selection(chosen_heads, chosen_channels, params)


def ul_mm(layers: dict[int, LayerScores], budget: float, remove_heads: int,
          min_kept: int = 1) -> Selection:
    per_layer = remove_heads // max(len(layers), 1)
    heads = {i: min(per_layer, l.shape.num_head_units - min_kept) for i, l in layers.items()}
    head_params = sum(h * layers[i].shape.head_unit_cost for i, h in heads.items())
    channel_cost = sum(l.shape.channel_cost for l in layers.values())
    per_layer_ch = max(round((budget - head_params) / channel_cost), 0) if channel_cost else 0
    channels = {i: max(min(per_layer_ch, l.shape.intermediate - min_kept), 0)  # MoE layers: 0
                for i, l in layers.items()}
    return _per_layer(layers, heads, channels)


def _uniform_counts(layers: dict[int, LayerScores], ratio: float, min_kept: int):
    heads = {i: min(int(ratio * l.shape.num_head_units), l.shape.num_head_units - min_kept)
             for i, l in layers.items()}
    channels = {i: max(min(int(ratio * l.shape.intermediate), l.shape.intermediate - min_kept), 0)
                for i, l in layers.items()}  # MoE layers have no channels to cut
    return heads, channels


def ul_um(layers: dict[int, LayerScores], budget: float, min_kept: int = 1) -> Selection:
    """One ratio for every module of every layer (``int(ratio * n)`` units, as the reference),
    the ratio chosen among the values where some count changes so the total is closest."""
    ratios = {0.0}
    for l in layers.values():
        ratios |= {k / l.shape.num_head_units for k in range(l.shape.num_head_units + 1)}
        ratios |= {k / l.shape.intermediate for k in range(1, l.shape.intermediate + 1)}
    def params(r: float) -> int:
        heads, channels = _uniform_counts(layers, r, min_kept)
        return sum(heads[i] * l.shape.head_unit_cost + channels[i] * l.shape.channel_cost
                   for i, l in layers.items())

    best = min(sorted(ratios), key=lambda r: abs(params(r) - budget))
    return _per_layer(layers, *_uniform_counts(layers, best, min_kept))


def default_remove_heads(layers: dict[int, LayerScores], budget: float) -> int:
    """For ``*-MM`` without ``remove_heads``: heads lose the same share of their parameters as
    the whole prunable body does."""
    head_total = sum(l.shape.num_head_units * l.shape.head_unit_cost for l in layers.values())
    mlp_total = sum(l.shape.intermediate * l.shape.channel_cost for l in layers.values())
    share = budget / max(head_total + mlp_total, 1)
    return round(share * sum(l.shape.num_head_units for l in layers.values()))


def select(structure: str, layers: dict[int, LayerScores], budget: float,
           remove_heads: int | None = None, min_kept: int = 1) -> Selection:
    check_reachable(layers, budget, min_kept)
    if structure == "AL-AM":
        return al_am(layers, budget, min_kept)
    if structure == "UL-UM":
        return ul_um(layers, budget, min_kept)
    if remove_heads is None:
        remove_heads = default_remove_heads(layers, budget)
    if structure == "AL-MM":
        return al_mm(layers, budget, remove_heads, min_kept)
    return ul_mm(layers, budget, remove_heads, min_kept)


def round_selection(layers: dict[int, LayerScores], selection: Selection, budget: float,
                    multiple: int, min_kept: int = 1) -> Selection:
    """``selection`` with every layer's kept MLP channels a multiple of ``multiple`` (or all of
    them), the weakest channels going, the removed parameters still closest to ``budget``."""
    if multiple == 1:
        return selection
    sizes = {i: l.shape.intermediate for i, l in layers.items()}
    costs = {i: l.shape.channel_cost for i, l in layers.items()}
    kept = {i: sizes[i] - len(selection.channels.get(i, [])) for i in layers}
    if len(set(kept.values())) == 1 and len(set(sizes.values())) == 1:
        check_round_to(multiple, sizes)
        rounded = _round_uniformly(kept, sizes, costs, multiple, selection.params - budget, min_kept)
    else:
        rounded = round_kept_channels(kept, sizes, {i: l.channels for i, l in layers.items()},
                                      costs, multiple, selection.params - budget, min_kept)
    channels = {i: _weakest(layers[i].channels, sizes[i] - k) for i, k in rounded.items()}
    params = selection.params + sum((kept[i] - k) * costs[i] for i, k in rounded.items())
    return Selection(selection.heads, {i: c for i, c in channels.items() if c}, params)


def _round_uniformly(kept: dict[int, int], sizes: dict[int, int], costs: dict[int, int],
                     multiple: int, excess: float, min_kept: int) -> dict[int, int]:
    """A cut that keeps the same width in every layer (UL-UM, a uniform model) keeps it uniform:
    the common count goes to the multiple below or above, whichever lands the removed parameters
    closer to the target (``excess``: removed minus target before rounding), so the pruned model
    stays a stock model class rather than the per-layer format."""
    k, size = next(iter(kept.values())), next(iter(sizes.values()))
    if k == size or k % multiple == 0:
        return dict(kept)
    down, up = k - k % multiple, min(k - k % multiple + multiple, size)
    cost = sum(costs.values())
    keep_down = down >= max(min_kept, 1) and \
        abs(excess + (k - down) * cost) <= abs(excess - (up - k) * cost)
    return dict.fromkeys(kept, down if keep_down else up)

