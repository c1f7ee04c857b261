"""Shared by the width methods (``flap``, ``wanda-sp``, ``mag-sp``, ``magnitude``): GQA head units,
what a unit costs in parameters, and turning kept units into a :class:`LayerPlan`.

With grouped-query attention a query head cannot leave alone: Hugging Face attention repeats each
KV head for ``num_heads // num_kv_heads`` consecutive query heads, so every kept KV head must keep
the same number of query heads.  Two pruning units respect that:

* ``kv_group`` — one KV head with all its query heads (q, k, v rows and o columns);
* ``query_head`` — a *slice*: one query head from every KV group at once (q rows and o columns),
  so the groups shrink evenly and every KV head stays.  With one query head per group (plain
  multi-head attention) a slice would empty the layer, so there the unit is the KV group.

Every method (``taylor`` included) means these two units, and every method that turns a share of
units into a count rounds the same way: :func:`units_removed` (up, as LLM-Pruner and
Torch-Pruning count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from prunectl.errors import UserError
from prunectl.plan import LayerPlan
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter, family_for
from prunectl.modeling.structure import Structure, from_model

HeadUnit = Literal["kv_group", "query_head"]


@dataclass(frozen=True)
class LayerShape:
    """What one layer holds and what one pruning unit of each kind costs in parameters."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    head_unit: str  # the unit actually used ("kv_group" or "query_head")
    head_unit_cost: int  # parameters one head unit holds
    channel_cost: int  # parameters one MLP channel holds

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def num_head_units(self) -> int:
        return self.num_kv_heads if self.head_unit == "kv_group" else self.group_size


def layer_shape(adapter: Adapter, i: int, head_unit: str,
                structure: Structure | None = None) -> LayerShape:
    """Shapes and unit costs of layer ``i``: what the cost model says one unit less saves
    (biases and Phi-3's fused rows included).  Pass the model's ``structure`` when asking for
    every layer."""
    s = structure or from_model(adapter.model)
    layer = s.layers[i]
    heads, kv = layer.heads, layer.kv_heads
    group = heads // kv if kv else 0
    unit = head_unit if group > 1 else "kv_group"
    one_less = (replace(layer, heads=heads - kv) if unit == "query_head"
                else replace(layer, heads=heads - group, kv_heads=kv - 1))
    head_cost = cost.attention_parameters(s, layer) - cost.attention_parameters(s, one_less)
    channel = cost.mlp_parameters(s, layer) - cost.mlp_parameters(
        s, replace(layer, intermediate=layer.intermediate - 1))
    intermediate = 0 if layer.experts else layer.intermediate  # routed experts: no channels
    return LayerShape(heads, kv, s.head_dim, intermediate, unit, head_cost, channel)


def units_removed(n: int, ratio: float) -> int:
    """Units of ``n`` a share ``ratio`` removes: rounded up, ``n - int(n * (1 - ratio))`` (the
    kept count of LLM-Pruner and Torch-Pruning), at most ``n - 1`` so a module keeps one unit."""
    return min(n - int(n * (1 - ratio) + 1e-9), max(n - 1, 0))


def check_width_model(model_type: str, method: str, attention_only_ok: bool) -> None:
    """Refuse models whose widths ``method`` cannot prune.  Routed experts share no MLP
    channels, so on a mixture-of-experts model the FLAP family prunes attention heads only and
    methods that also cut MLP channels or the hidden size refuse it; OLMoE normalises q and k
    over all heads at once, so it has no head to prune either."""
    family = family_for(model_type)
    if not family.moe:
        return
    if not attention_only_ok:
        raise UserError(f"method {method} prunes dense MLP channels; '{model_type}' is a "
                        f"mixture-of-experts model: use reap, flap / wanda-sp / mag-sp "
                        f"(attention heads) or the block methods")
    if family.whole_qk_norm:
        raise UserError(f"'{model_type}' normalises q and k over all heads at once, so {method} "
                        f"has nothing to prune; use reap or the block methods")


def head_unit_members(shape: LayerShape, head_scores: torch.Tensor) -> list[list[int]]:
    """The query heads of each head unit of a layer.

    ``kv_group`` units are KV heads in order.  ``query_head`` slice ``j`` holds the ``j``-th least
    important query head of every KV group (by ``head_scores``), so slices are removed weakest
    first and each group loses the same number of heads.
    """
    g = shape.group_size
    if shape.head_unit == "kv_group":
        return [list(range(k * g, (k + 1) * g)) for k in range(shape.num_kv_heads)]
    order = head_scores.reshape(shape.num_kv_heads, g).argsort(dim=1, stable=True)
    return [[k * g + int(order[k, j]) for k in range(shape.num_kv_heads)] for j in range(g)]


def head_unit_scores(shape: LayerShape, head_scores: torch.Tensor) -> torch.Tensor:
    """A unit's score is the mean of its query heads' scores."""
    members = head_unit_members(shape, head_scores)
    return torch.stack([head_scores[m].mean() for m in members])


def layer_plan(
    shape: LayerShape,
    head_scores: torch.Tensor,
    removed_head_units: list[int],
    removed_channels: list[int],
) -> LayerPlan:
    """Kept heads and channels of one layer, in dense numbering; ``None`` where nothing goes."""
    members = head_unit_members(shape, head_scores)
    gone_heads = {h for u in removed_head_units for h in members[u]}
    q_heads = kv_heads = channels = None
    if gone_heads:
        q_heads = [h for h in range(shape.num_heads) if h not in gone_heads]
        kv_heads = sorted({h // shape.group_size for h in q_heads})
    if removed_channels:
        gone = set(removed_channels)
        channels = [c for c in range(shape.intermediate) if c not in gone]
    return LayerPlan(q_heads=q_heads, kv_heads=kv_heads, mlp_channels=channels)


def removed_o_channels(q_heads_kept: list[int] | None, num_heads: int, head_dim: int) -> list[int]:
    """o_proj input channels of the query heads a layer plan drops."""
    if q_heads_kept is None:
        return []
    kept = set(q_heads_kept)
    return [h * head_dim + d for h in range(num_heads) if h not in kept for d in range(head_dim)]


def round_kept_channels(
    kept: dict[int, int],
    sizes: dict[int, int],
    scores: dict[int, torch.Tensor],
    costs: dict[int, int],
    multiple: int,
    excess: float,
    min_kept: int = 1,
) -> dict[int, int]:
    """Kept MLP channels per layer rounded to multiples of ``multiple`` (``method.round_to``).

    Matrix kernels run widths such as 1,341 channels slower than multiples of 8, 64 or 128.  Every
    layer whose count is not a multiple starts at the multiple below (its next-weakest channels go
    too); then, strongest returning channels first (their mean score, standardised within the
    layer so layers compare), layers move to the multiple above while that brings the removed
    parameters closer to the target.  ``excess`` is the unrounded choice's removed parameters
    minus the target; ``costs`` are parameters per channel.  A layer keeps a multiple or all
    its channels; one that would keep fewer than ``min_kept`` goes up.  ``multiple`` 1 changes
    nothing.
    """
    if multiple == 1:
        return dict(kept)
    check_round_to(multiple, sizes)
    rounded, ups = dict(kept), []
    for i, k in kept.items():
        if k == sizes[i] or k % multiple == 0:
            continue
        down, up = k - k % multiple, min(k - k % multiple + multiple, sizes[i])
        excess += (k - down) * costs[i]
        rounded[i] = down
        ranked = scores[i].float().sort(descending=True).values
        returning = (ranked[down:up].mean() - ranked.mean()) / ranked.std().clamp_min(1e-12)
        ups.append((down < min_kept, float(returning), i))
    for forced, _score, i in sorted(ups, key=lambda u: (not u[0], -u[1], u[2])):
        up = min(rounded[i] + multiple, sizes[i])
        gain = (up - rounded[i]) * costs[i]
        if forced or abs(excess - gain) < abs(excess):
            rounded[i], excess = up, excess - gain
    return rounded


def check_round_to(multiple: int, sizes: dict[int, int]) -> None:
    """A multiple wider than some layer's MLP (``sizes``: layer -> channels) is a user error;
    layers without MLP channels to prune (0: routed experts) do not count."""
    narrow = min((i for i in sizes if 0 < sizes[i] < multiple), default=None, key=sizes.get)
    if narrow is not None:
        raise UserError(
            f"method.round_to={multiple} exceeds the {sizes[narrow]} MLP channels of layer "
            f"{narrow}; use a smaller multiple (1, 8, 64 or 128)"
        )


def removed_channels(adapter: Adapter, plan, i: int, name: str) -> list[int]:
    """Input channels of layer ``i``'s ``o_proj``/``down_proj`` that ``plan`` removes (all of
    them when the block goes)."""
    lp = plan.layer(i)
    if name == "o_proj":
        if not lp.attention:
            return list(range(adapter.o_proj(i).in_features))
        return removed_o_channels(lp.q_heads, adapter.num_heads(i), adapter.head_dim)
    if not lp.mlp:
        return list(range(adapter.intermediate_size(i)))
    if lp.mlp_channels is None:
        return []
    kept = set(lp.mlp_channels)
    return [c for c in range(adapter.intermediate_size(i)) if c not in kept]
