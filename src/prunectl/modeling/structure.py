"""One description of a model's shape, whatever asks: which residual blocks each decoder layer
has, how many query heads, KV heads and MLP channels they hold, which projections carry biases,
and the widths all layers share.

It is read from a model's weights (a pruned model describes itself), from a Hugging Face config
(built on the meta device: a 7B model's shape without its memory), or from a dense structure and a
plan (the shape a plan gives before any surgery).  :mod:`prunectl.modeling.cost` counts
parameters, KV cache and FLOPs over it, so every count in the project comes from one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from prunectl.modeling.adapters import Adapter


@dataclass(frozen=True)
class LayerStructure:
    """One decoder layer; a removed block holds no heads or channels."""

    attention: bool
    mlp: bool
    heads: int
    kv_heads: int
    intermediate: int
    qkv_bias: bool = False  # q, k and v projections carry biases (Qwen2)
    o_bias: bool = False  # FLAP's bias compensation adds one
    up_bias: bool = False  # gate and up projections carry biases
    down_bias: bool = False


@dataclass(frozen=True)
class Structure:
    hidden: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head is the input embedding
    qk_norm: bool  # per-head RMSNorm (head_dim weights) on q and k (Qwen3)
    layers: tuple[LayerStructure, ...]

    def resized(self, hidden: int | None = None, **layer_fields: int) -> Structure:
        """The same model with another hidden size and, in every layer, the given counts."""
        return replace(self, hidden=self.hidden if hidden is None else hidden,
                       layers=tuple(replace(layer, **layer_fields) for layer in self.layers))


def _has_bias(module: nn.Module | None, *names: str) -> bool:
    linears = [getattr(module, name, None) for name in names]
    return bool(linears) and all(lin is not None and lin.bias is not None for lin in linears)


def from_model(model: nn.Module) -> Structure:
    """The structure of a loaded model, read from its weights."""
    adapter = Adapter(model)
    fused = adapter.family
    layers = []
    for i in range(adapter.num_layers):
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        layers.append(LayerStructure(
            attention=attn is not None, mlp=mlp is not None,
            heads=adapter.num_heads(i), kv_heads=adapter.num_kv_heads(i),
            intermediate=adapter.intermediate_size(i),
            qkv_bias=_has_bias(attn, *(("qkv_proj",) if fused.fused_qkv else ("q_proj", "k_proj"))),
            o_bias=_has_bias(attn, "o_proj"),
            up_bias=_has_bias(mlp, *(("gate_up_proj",) if fused.fused_gate_up
                                     else ("gate_proj", "up_proj"))),
            down_bias=_has_bias(mlp, "down_proj"),
        ))
    embed = adapter.embed_tokens.weight
    qk_norm = any(getattr(adapter.attention(i), "q_norm", None) is not None
                  for i in range(adapter.num_layers))
    return Structure(hidden=adapter.hidden_size, head_dim=adapter.head_dim, vocab=embed.shape[0],
                     tied=adapter.lm_head.weight is embed, qk_norm=qk_norm, layers=tuple(layers))


def from_config(config: Any) -> Structure:
    """The structure of the model a Hugging Face config describes, without weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return from_model(AutoModelForCausalLM.from_config(config))


def with_plan(structure: Structure, plan: Any, added_biases: Iterable[str] = ()) -> Structure:
    """The structure ``plan`` (a :class:`~prunectl.methods.plan.Plan`) leaves; ``added_biases``
    names the ``layers.N.o_proj`` / ``layers.N.down_proj`` biases compensation adds."""
    added = set(added_biases)
    layers = []
    for i, dense in enumerate(structure.layers):
        lp = plan.layer(i)
        attention, mlp = dense.attention and lp.attention, dense.mlp and lp.mlp
        layers.append(replace(
            dense, attention=attention, mlp=mlp,
            heads=(dense.heads if lp.q_heads is None else len(lp.q_heads)) if attention else 0,
            kv_heads=(dense.kv_heads if lp.kv_heads is None else len(lp.kv_heads))
            if attention else 0,
            intermediate=(dense.intermediate if lp.mlp_channels is None
                          else len(lp.mlp_channels)) if mlp else 0,
            o_bias=dense.o_bias or f"layers.{i}.o_proj" in added,
            down_bias=dense.down_bias or f"layers.{i}.down_proj" in added,
        ))
    hidden = structure.hidden if plan.hidden_channels is None else len(plan.hidden_channels)
    return replace(structure, hidden=hidden, layers=tuple(layers))


def layer_rows(structure: Structure) -> list[dict]:
    """Per layer what it keeps, as the plain rows reports and the model card show."""
    return [{"layer": i, "attention": layer.attention, "mlp": layer.mlp, "heads": layer.heads,
             "kv_heads": layer.kv_heads, "intermediate": layer.intermediate}
            for i, layer in enumerate(structure.layers)]
