"""What a :class:`~prunectl.modeling.structure.Structure` costs: parameters, KV-cache bytes and
FLOPs per token, and the one accounting of a plan (:func:`account`) that every method's
``achieved``, the apply summary and puzzle's budgets go through.

Parameters are counted the way :func:`prunectl.modeling.params.count_parameters` counts a loaded
model (biases included, tied embeddings once, every norm an RMSNorm of its width), so a count from
a config or a plan equals the count of the model it describes.  A residual block's parameters
include its pre-norm: removing the block removes the norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunectl.modeling.structure import LayerStructure, Structure, with_plan


def attention_parameters(s: Structure, layer: LayerStructure) -> int:
    """q, k, v, o projections (and biases, and Qwen3's q/k norms) of one layer."""
    if not layer.attention:
        return 0
    q, kv = layer.heads * s.head_dim, layer.kv_heads * s.head_dim
    norms = {None: 0, "head": 2 * s.head_dim, "whole": q + kv}[s.qk_norm]
    return (q + 2 * kv) * (s.hidden + layer.qkv_bias) + q * s.hidden + layer.o_bias * s.hidden \
        + norms


def mlp_parameters(s: Structure, layer: LayerStructure) -> int:
    """gate, up and down projections (and biases) of one layer; with routed experts, every
    expert, its router row and a shared expert with its gate."""
    if not layer.mlp:
        return 0
    if layer.expert_intermediate:
        routed = layer.experts * (3 * layer.expert_intermediate + 1)  # experts and router rows
        shared = 3 * layer.shared_intermediate + 1 if layer.shared_intermediate else 0
        return (routed + shared) * s.hidden
    c = layer.intermediate
    return 2 * c * (s.hidden + layer.up_bias) + c * s.hidden + layer.down_bias * s.hidden


def block_parameters(s: Structure, i: int) -> dict[str, int]:
    """Layer ``i``'s attention and MLP residual blocks, each with its norms (0 when removed)."""
    layer, norms = s.layers[i], s.block_norms * s.hidden
    return {"attn": attention_parameters(s, layer) + layer.attention * norms,
            "mlp": mlp_parameters(s, layer) + layer.mlp * norms}


def layer_weights(s: Structure, i: int) -> int:
    """Layer ``i``'s attention and MLP modules without norms: the body FLAP's ratio is of."""
    return attention_parameters(s, s.layers[i]) + mlp_parameters(s, s.layers[i])


def parameters(s: Structure) -> dict[str, int]:
    """``{"total", "non_embedding", "embedding"}`` as ``count_parameters`` gives them."""
    embedding = s.vocab * s.hidden * (1 if s.tied else 2)
    body = sum(sum(block_parameters(s, i).values()) for i in range(len(s.layers)))
    total = embedding + body + s.hidden  # the final norm
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


def layer_kv_cache_bytes(s: Structure, layer: LayerStructure, bytes_per_value: int = 2) -> int:
    """Keys and values one token adds to one layer's cache (0 when its attention is removed)."""
    return 2 * layer.kv_heads * s.head_dim * bytes_per_value


def kv_cache_bytes_per_token(s: Structure, bytes_per_value: int = 2) -> int:
    """Keys and values one token adds to the cache, over every layer that keeps attention."""
    return sum(layer_kv_cache_bytes(s, layer, bytes_per_value) for layer in s.layers)


def layer_flops(s: Structure, layer: LayerStructure, context: int = 0) -> int:
    """Forward FLOPs of one token through one decoder layer (see :func:`flops_per_token`)."""
    q, kv = layer.heads * s.head_dim, layer.kv_heads * s.head_dim
    # routed experts: the top-k the router picks, plus the router and a shared expert
    active = (min(s.top_k, layer.experts) * layer.expert_intermediate
              + layer.shared_intermediate if layer.expert_intermediate else layer.intermediate)
    macs = (2 * q + 2 * kv) * s.hidden + 3 * active * s.hidden + layer.experts * s.hidden
    macs += 2 * q * context  # q·k over the context, then the weighted sum of values
    return 2 * macs


def flops_per_token(s: Structure, context: int = 0) -> int:
    """Forward FLOPs of one token: two per multiply-add of every projection and the LM head,
    plus the attention scores and weighted values over ``context`` earlier tokens (biases and
    norms, a rounding error, left out)."""
    return 2 * s.vocab * s.hidden + sum(layer_flops(s, layer, context) for layer in s.layers)


@dataclass(frozen=True)
class Account:
    """What one model costs: ``params`` (``total``, ``non_embedding``, ``embedding``), the KV
    cache one token adds and the FLOPs of one token."""

    params: dict[str, int]
    kv_cache_bytes: int
    flops: int

    def achieved(self, dense: dict[str, int]) -> dict[str, Any]:
        """The ``params_*`` keys of a plan's ``achieved``: this pruned model against the
        ``dense`` counts."""
        return achieved_params(dense, dense["total"] - self.params["total"])


def gained_biases(dense: Structure, plan: Any) -> list[str]:
    """The ``layers.N.o_proj`` / ``layers.N.down_proj`` that a reconstruction (``bias`` or
    ``least_squares``) gives a bias: every kept projection the plan takes inputs from that has
    none (a removed block takes its projection with it)."""
    pruned, names = with_plan(dense, plan), []
    for i, (before, after) in enumerate(zip(dense.layers, pruned.layers)):
        if after.attention and after.heads < before.heads and not before.o_bias:
            names.append(f"layers.{i}.o_proj")
        if (after.mlp and not before.expert_intermediate and after.intermediate < before.intermediate
                and not before.down_bias):
            names.append(f"layers.{i}.down_proj")
    return names


def account(dense: Structure, plan: Any = None, *, biased: bool = False,
            bytes_per_value: int = 2) -> Account:
    """What the model ``plan`` leaves of ``dense`` costs (``dense`` itself without a plan);
    ``biased``: the pruned projections gain biases (:func:`gained_biases`)."""
    s = dense if plan is None else with_plan(
        dense, plan, gained_biases(dense, plan) if biased else ())
    return Account(parameters(s), kv_cache_bytes_per_token(s, bytes_per_value), flops_per_token(s))


def achieved_params(dense: dict[str, int], removed: int) -> dict[str, Any]:
    """``params_total``, ``params_non_embedding``, ``params_removed`` and the two ratios, for
    ``removed`` parameters of a model counted ``dense``."""
    return {"params_total": dense["total"], "params_non_embedding": dense["non_embedding"],
            "params_removed": removed, "params_ratio": removed / dense["total"],
            "params_ratio_non_embedding": removed / dense["non_embedding"]}
