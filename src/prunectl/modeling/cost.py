"""What a :class:`~prunectl.modeling.structure.Structure` costs: parameters, KV-cache bytes and
FLOPs per token.

Parameters are counted the way :func:`prunectl.modeling.params.count_parameters` counts a loaded
model (biases included, tied embeddings once, every norm an RMSNorm of its width), so a count from
a config or a plan equals the count of the model it describes.  A residual block's parameters
include its pre-norm: removing the block removes the norm.
"""

from __future__ import annotations

from prunectl.modeling.structure import LayerStructure, Structure


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
