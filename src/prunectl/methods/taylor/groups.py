"""Coupled structures of a decoder, seen through the Adapter, and their importance.

A structure is every weight slice that must go together (LLM-Pruner's dependency groups):

- an attention unit: ``query_head`` is one query head's ``q`` rows and ``o`` columns (plus its
  ``k``/``v`` rows when it has a KV head of its own, i.e. without GQA); ``kv_group`` is a KV head
  with all its query heads: ``q``, ``k``, ``v`` rows and ``o`` columns;
- an MLP channel: its ``gate`` and ``up`` rows and ``down`` column;
- a hidden dimension (``scope: channel``): its column of the embedding and of every projection
  reading the residual stream, its row of every projection writing it, its element of every norm.

Query heads of one KV group are ``group * n_rep ... group * n_rep + n_rep - 1`` (Hugging Face's
``repeat_kv`` layout).  Deviation: the reference's GQA script (``llama3.py``) pairs ``q`` rows with
``k`` rows by flat position, mixing heads of different groups; here a group's query heads are
summed per head_dim position before the reduction over weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunectl.methods.taylor.importance import channel_importance, unit_importance
from prunectl.modeling.adapters import Adapter

#: (weight or view, channel dim) -> importance of each channel, fp32
Scorer = Callable[[torch.Tensor, int], torch.Tensor]


def scorer(kind: str, store=None, norm_offset: float = 0.0) -> Scorer:
    """Channel importance of one weight, reading gradients from ``store`` when ``kind`` needs them.

    A norm (the only 1-D weight scored) scales by ``norm_offset + weight``: removing one of its
    elements removes that scale, so Gemma's ``1 + weight`` norms are scored on it."""

    def score(weight: torch.Tensor, dim: int) -> torch.Tensor:
        grad, fisher = store.views(weight) if store is not None else (None, None)
        if weight.dim() == 1 and norm_offset:
            weight = weight.detach() + norm_offset
        return channel_importance(weight, grad, fisher, kind, dim)

    return score


def head_weights(adapter: Adapter, i: int) -> list[torch.Tensor]:
    """The weights an attention unit couples: q, k, v (rows) and o (columns)."""
    w = adapter.attention_weights(i)
    return [w.q, w.k, w.v, w.o]


def mlp_weights(adapter: Adapter, i: int) -> list[torch.Tensor]:
    w = adapter.mlp_weights(i)
    return [w.gate, w.up, w.down]


def hidden_weights(adapter: Adapter) -> list[tuple[torch.Tensor, int]]:
    """Every weight a hidden dimension touches, with the dim that indexes it (tied weights once)."""
    found: dict[int, tuple[torch.Tensor, int]] = {}

    def add(weight: torch.Tensor, dim: int) -> None:
        found.setdefault(id(weight), (weight, dim))

    add(adapter.embed_tokens.weight, 1)
    for i in range(adapter.num_layers):
        for block in ("attention", "mlp"):
            for norm in adapter.block_norms(i, block).values():
                add(norm.weight, 0)
        if adapter.attention(i) is not None:
            q, k, v, o = head_weights(adapter, i)
            for weight in (q, k, v):
                add(weight, 1)
            add(o, 0)
        if adapter.mlp(i) is not None:
            gate, up, down = mlp_weights(adapter, i)
            add(gate, 1)
            add(up, 1)
            add(down, 0)
    add(adapter.final_norm.weight, 0)
    add(adapter.lm_head.weight, 1)
    return list(found.values())


def head_scores(
    adapter: Adapter, i: int, score: Scorer, head_unit: str, aggregation: str
) -> torch.Tensor:
    """Importance of layer ``i``'s query heads ([n_heads]) or KV groups ([n_kv_heads])."""
    q, k, v, o = head_weights(adapter, i)
    n_heads, n_kv, d = adapter.num_heads(i), adapter.num_kv_heads(i), adapter.head_dim
    n_rep = n_heads // n_kv
    per_q = score(q, 0).view(n_heads, d)
    per_o = score(o, 1).view(n_heads, d)
    per_k = score(k, 0).view(n_kv, d)
    per_v = score(v, 0).view(n_kv, d)
    if head_unit == "query_head" and n_rep > 1:
        return unit_importance([per_q, per_o], aggregation)
    if n_rep > 1:  # kv_group: a group's query heads summed per head_dim position
        per_q = per_q.view(n_kv, n_rep, d).sum(1)
        per_o = per_o.view(n_kv, n_rep, d).sum(1)
    return unit_importance([per_q, per_k, per_v, per_o], aggregation)


def channel_scores(adapter: Adapter, i: int, score: Scorer, aggregation: str) -> torch.Tensor:
    """Importance of layer ``i``'s MLP channels ([intermediate])."""
    gate, up, down = mlp_weights(adapter, i)
    return unit_importance([score(gate, 0), score(up, 0), score(down, 1)], aggregation)


def hidden_scores(adapter: Adapter, score: Scorer, aggregation: str) -> torch.Tensor:
    """Importance of every hidden dimension ([hidden])."""
    return unit_importance([score(w, dim) for w, dim in hidden_weights(adapter)], aggregation)


def scored_parameters(adapter: Adapter, scope: str, layers: range) -> list[torch.Tensor]:
    """The weights whose gradients a scope needs (views resolve to their parameter in the store)."""
    if scope == "channel":
        return [w for w, _ in hidden_weights(adapter)]
    weights: list[torch.Tensor] = []
    for i in layers:
        weights += head_weights(adapter, i) + mlp_weights(adapter, i)
    return weights
