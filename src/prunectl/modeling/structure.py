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
    #: mixture of experts: routed experts kept (``intermediate`` is their channels summed), the
    #: channels of one, and those of a shared expert beside them (Qwen2-MoE; 0: none)
    experts: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0


@dataclass(frozen=True)
class Structure:
    hidden: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head is the input embedding
    #: RMSNorm on q and k: None, "head" (head_dim weights each, Qwen3) or "whole" (over all
    #: heads at once, OLMoE)
    qk_norm: str | None
    layers: tuple[LayerStructure, ...]
    top_k: int = 0  # experts the router picks per token (MoE models)
    block_norms: int = 1  # hidden-wide norms each residual block owns (Gemma's sandwich: 2)

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
    layers = tuple(_layer(adapter, i) for i in range(adapter.num_layers))
    embed = adapter.embed_tokens.weight
    norms = [attn.q_norm.weight.numel() for i in range(adapter.num_layers)
             if (attn := adapter.attention(i)) is not None and getattr(attn, "q_norm", None)]
    qk_norm = None if not norms else "head" if norms[0] == adapter.head_dim else "whole"
    return Structure(hidden=adapter.hidden_size, head_dim=adapter.head_dim, vocab=embed.shape[0],
                     tied=adapter.lm_head.weight is embed, qk_norm=qk_norm, layers=layers,
                     top_k=getattr(adapter.config, "num_experts_per_tok", 0) or 0,
                     block_norms=sum(name is not None for name in adapter.family.norms["mlp"]))


def _layer(adapter: Adapter, i: int) -> LayerStructure:
    attn, mlp, fused = adapter.attention(i), adapter.mlp(i), adapter.family
    experts = adapter.experts(i)
    shape = dict(
        attention=attn is not None, mlp=mlp is not None,
        heads=adapter.num_heads(i), kv_heads=adapter.num_kv_heads(i),
        qkv_bias=_has_bias(attn, *(("qkv_proj",) if fused.fused_qkv else ("q_proj", "k_proj"))),
        o_bias=_has_bias(attn, "o_proj"))
    if experts is None:
        return LayerStructure(
            **shape, intermediate=adapter.intermediate_size(i),
            up_bias=_has_bias(mlp, *(("gate_up_proj",) if fused.fused_gate_up
                                     else ("gate_proj", "up_proj"))),
            down_bias=_has_bias(mlp, "down_proj"))
    per_expert = experts.down_proj.shape[2]
    shared = getattr(mlp, "shared_expert", None)
    return LayerStructure(**shape, intermediate=adapter.num_experts(i) * per_expert,
                          experts=adapter.num_experts(i), expert_intermediate=per_expert,
                          shared_intermediate=0 if shared is None else
                          shared.down_proj.in_features)


def meta_model(config: Any) -> Any:
    """The model a Hugging Face config describes, on the meta device: shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def from_config(config: Any) -> Structure:
    """The structure of the model a Hugging Face config describes, without weights."""
    return from_model(meta_model(config))


def with_plan(structure: Structure, plan: Any, added_biases: Iterable[str] = ()) -> Structure:
    """The structure ``plan`` (a :class:`~prunectl.plan.Plan`) leaves; ``added_biases``
    names the ``layers.N.o_proj`` / ``layers.N.down_proj`` biases compensation adds."""
    added = set(added_biases)
    layers = []
    for i, dense in enumerate(structure.layers):
        lp = plan.layer(i)
        attention, mlp = dense.attention and lp.attention, dense.mlp and lp.mlp
        experts = (len(lp.experts) if getattr(lp, "experts", None) is not None
                   else dense.experts) if mlp else 0
        layers.append(replace(
            dense, attention=attention, mlp=mlp,
            heads=(dense.heads if lp.q_heads is None else len(lp.q_heads)) if attention else 0,
            kv_heads=(dense.kv_heads if lp.kv_heads is None else len(lp.kv_heads))
            if attention else 0,
            intermediate=(experts * dense.expert_intermediate if dense.expert_intermediate
                          else dense.intermediate if lp.mlp_channels is None
                          else len(lp.mlp_channels)) if mlp else 0,
            experts=experts,
            o_bias=dense.o_bias or f"layers.{i}.o_proj" in added,
            down_bias=dense.down_bias or f"layers.{i}.down_proj" in added,
        ))
    hidden = structure.hidden if plan.hidden_channels is None else len(plan.hidden_channels)
    return replace(structure, hidden=hidden, layers=tuple(layers))


def layer_rows(structure: Structure) -> list[dict]:
    """Per layer what it keeps, as the plain rows reports and the model card show."""
    rows = []
    for i, layer in enumerate(structure.layers):
        rows.append({"layer": i, "attention": layer.attention, "mlp": layer.mlp,
                     "heads": layer.heads, "kv_heads": layer.kv_heads,
                     "intermediate": layer.intermediate})
        if layer.expert_intermediate:  # MoE: kept routed experts
            rows[-1]["experts"] = layer.experts
    return rows
