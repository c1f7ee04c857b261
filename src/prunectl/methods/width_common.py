"""Shared by the width methods (``flap``, ``wanda-sp``, ``mag-sp``, ``magnitude``): GQA head units,
what a unit costs in parameters, and turning kept units into a :class:`LayerPlan`.

With grouped-query attention a query head cannot leave alone: Hugging Face attention repeats each
KV head for ``num_heads // num_kv_heads`` consecutive query heads, so every kept KV head must keep
the same number of query heads.  Two pruning units respect that:

* ``kv_group`` — one KV head with all its query heads (q, k, v rows and o columns);
* ``query_head`` — a *slice*: one query head from every KV group at once (q rows and o columns),
  so the groups shrink evenly and every KV head stays.  With one query head per group (plain
  multi-head attention) a slice would empty the layer, so there the unit is the KV group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunectl.methods.plan import LayerPlan
from prunectl.modeling.adapters import Adapter

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
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    up_bias: bool = False  # gate/up projections carry biases
    o_bias: bool = False
    down_bias: bool = False

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def num_head_units(self) -> int:
        return self.num_kv_heads if self.head_unit == "kv_group" else self.group_size


def _bias(module, name: str) -> bool:
    linear = getattr(module, name, None)
    return linear is not None and linear.bias is not None


def layer_shape(adapter: Adapter, i: int, head_unit: str) -> LayerShape:
    """Shapes and unit costs of layer ``i`` (biases included, Phi-3's fused rows too)."""
    attn, mlp = adapter.attention(i), adapter.mlp(i)
    hidden, hd = adapter.hidden_size, adapter.head_dim
    heads, kv = adapter.num_heads(i), adapter.num_kv_heads(i)
    if adapter.family.fused_qkv:
        q_bias = k_bias = _bias(attn, "qkv_proj")
    else:
        q_bias, k_bias = _bias(attn, "q_proj"), _bias(attn, "k_proj")
    query_head = hd * (hidden + q_bias) + hidden * hd  # q rows (+bias) and o columns
    kv_head = 2 * hd * (hidden + k_bias)  # k and v rows (+bias)
    group = heads // kv if kv else 0
    unit = head_unit if group > 1 else "kv_group"
    head_cost = kv * query_head if unit == "query_head" else group * query_head + kv_head
    if adapter.family.fused_gate_up:
        up_bias = _bias(mlp, "gate_up_proj")
    else:
        up_bias = _bias(mlp, "gate_proj") and _bias(mlp, "up_proj")
    channel = 2 * (hidden + up_bias) + hidden  # gate and up rows (+bias), down column
    return LayerShape(
        heads, kv, hd, adapter.intermediate_size(i), unit, head_cost, channel,
        qkv_bias=q_bias, up_bias=up_bias, o_bias=_bias(attn, "o_proj"),
        down_bias=_bias(mlp, "down_proj"),
    )


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
