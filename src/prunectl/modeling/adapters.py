"""Architecture adapters: the one place that knows where a model family keeps its modules.

Every method asks the same questions (where are the layers, which modules form the attention and
MLP residual blocks, how do heads and KV groups map to weight rows) and asks them here, never
through ``model.model.layers[i].self_attn`` directly.  A family is a row in ``FAMILIES``; a
family with fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``) is described by flags
rather than a subclass.

An adapter is bound to one model instance.  It reads per-layer shapes from the weights, not from
the config, so it also describes a pruned model whose layers differ (a layer whose attention or
MLP block was removed reports ``None`` for that block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunectl.errors import UserError
from prunectl.modeling.modeling_prunectl import PRE_NORMS, SANDWICH_NORMS, layer_type


@dataclass(frozen=True)
class Family:
    """Module names of one model family, relative to a decoder layer."""

    name: str
    model_types: tuple[str, ...]
    fused_qkv: bool = False  # q, k and v rows stacked in one ``qkv_proj`` (Phi-3)
    fused_gate_up: bool = False  # gate and up rows stacked in one ``gate_up_proj`` (Phi-3)
    moe: bool = False  # MLP blocks are routed experts (fused 3-D weights) behind a top-k router
    shared_expert: bool = False  # a dense, sigmoid-gated expert beside the routed ones (Qwen2-MoE)
    whole_qk_norm: bool = False  # RMSNorm over all heads' q and k rows at once (OLMoE)
    #: norm attribute names per residual block: (input, output or None); Gemma's output norms
    #: belong to the block they wrap, so removing the block removes them too
    norms: dict = field(default_factory=lambda: PRE_NORMS)
    rope_per_type: bool = False  # separate rotary bases for sliding and full layers (Gemma 3)
    norm_offset: float = 0.0  # RMSNorm scales by ``norm_offset + weight`` (Gemma: 1 + weight)


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",)),
    Family("mistral", ("mistral",)),
    Family("qwen2", ("qwen2",)),
    Family("qwen3", ("qwen3",)),
    Family("phi3", ("phi3",), fused_qkv=True, fused_gate_up=True),
    Family("qwen2_moe", ("qwen2_moe",), moe=True, shared_expert=True),
    Family("qwen3_moe", ("qwen3_moe",), moe=True),
    Family("mixtral", ("mixtral",), moe=True),
    Family("olmoe", ("olmoe",), moe=True, whole_qk_norm=True),
    Family("gemma2", ("gemma2",), norms=SANDWICH_NORMS, norm_offset=1.0),
    Family("gemma3_text", ("gemma3_text",), norms=SANDWICH_NORMS, rope_per_type=True,
           norm_offset=1.0),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)

#: refused model types that have a supported relative, named in the refusal
RELATIVES = {"gemma3": " (multimodal Gemma 3; its text-only checkpoints, gemma3_text, are)"}


def family_for(model_type: str) -> Family:
    """The family of a ``config.model_type``; an unsupported one is a user error listing the rest."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UserError(
        f"architecture '{model_type}' is not supported{RELATIVES.get(model_type, '')}; "
        f"supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )


@dataclass(frozen=True)
class AttentionWeights:
    """Views of one layer's attention weights, split per projection (views share storage)."""

    q: torch.Tensor  # [n_heads * head_dim, hidden]
    k: torch.Tensor  # [n_kv_heads * head_dim, hidden]
    v: torch.Tensor  # [n_kv_heads * head_dim, hidden]
    o: torch.Tensor  # [hidden, n_heads * head_dim]


@dataclass(frozen=True)
class MlpWeights:
    """Views of one layer's MLP weights."""

    gate: torch.Tensor  # [intermediate, hidden]
    up: torch.Tensor  # [intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]


class Adapter:
    """A model of one supported family, seen through the questions pruning methods ask."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.family = family_for(getattr(model.config, "model_type", "?"))
        self.decoder = model.model  # LlamaModel and its siblings
        self.head_dim: int = getattr(self.config, "head_dim", None) or (
            self.config.hidden_size // self.config.num_attention_heads
        )
        self._block_inputs: dict[tuple, dict[str, Any]] = {}

    # --- where things are -------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def hidden_size(self) -> int:
        return self.decoder.embed_tokens.weight.shape[1]

    @property
    def embed_tokens(self) -> nn.Module:
        return self.decoder.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def attention(self, i: int) -> nn.Module | None:
        """The attention module of layer ``i``, or None when that block was removed."""
        return getattr(self.layers[i], "self_attn", None)

    def mlp(self, i: int) -> nn.Module | None:
        return getattr(self.layers[i], "mlp", None)

    def input_norm(self, i: int) -> nn.Module | None:
        """The norm on the attention block's input."""
        return self._norm(i, "attention", 0)

    def post_attention_norm(self, i: int) -> nn.Module | None:
        """The norm on the MLP block's input: Llama's ``post_attention_layernorm``, Gemma's
        ``pre_feedforward_layernorm`` (Gemma's ``post_attention_layernorm`` is an output norm)."""
        return self._norm(i, "mlp", 0)

    def output_norm(self, i: int, block: str) -> nn.Module | None:
        """The norm on the output of layer ``i``'s ``attention`` / ``mlp`` block (Gemma), or None."""
        return self._norm(i, block, 1)

    def block_norms(self, i: int, block: str) -> dict[str, nn.Module]:
        """Every norm that belongs to layer ``i``'s ``attention`` / ``mlp`` block, by attribute
        name: they are counted, sliced and removed with the block."""
        names = [name for name in self.family.norms[block] if name is not None]
        return {name: getattr(self.layers[i], name) for name in names
                if hasattr(self.layers[i], name)}

    def _norm(self, i: int, block: str, end: int) -> nn.Module | None:
        name = self.family.norms[block][end]
        return None if name is None else getattr(self.layers[i], name, None)

    @property
    def logit_softcap(self) -> float | None:
        """Gemma 2's final soft-capping: logits are ``cap * tanh(logits / cap)``."""
        return getattr(self.config, "final_logit_softcapping", None)

    def o_proj(self, i: int) -> nn.Linear:
        """The attention output projection: its input holds one channel per (head, head_dim)."""
        return self.attention(i).o_proj

    def down_proj(self, i: int) -> nn.Linear:
        """The MLP output projection: its input holds one channel per intermediate unit."""
        return self.mlp(i).down_proj

    # --- shapes (read from the weights, so pruned layers report their own) -------------------
    def num_heads(self, i: int) -> int:
        attn = self.attention(i)
        return 0 if attn is None else attn.o_proj.in_features // self.head_dim

    def num_kv_heads(self, i: int) -> int:
        attn = self.attention(i)
        if attn is None:
            return 0
        if self.family.fused_qkv:
            q_rows = self.num_heads(i) * self.head_dim
            return (attn.qkv_proj.out_features - q_rows) // (2 * self.head_dim)
        return attn.k_proj.out_features // self.head_dim

    def intermediate_size(self, i: int) -> int:
        mlp = self.mlp(i)
        return 0 if mlp is None else mlp.down_proj.in_features

    # --- mixture of experts (routed experts as one MLP block) ---------------------------------
    def experts(self, i: int) -> nn.Module | None:
        """Layer ``i``'s routed experts (``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I]), or
        None when the layer has a dense MLP (Qwen-MoE ``mlp_only_layers``) or none at all."""
        return getattr(self.mlp(i), "experts", None) if self.family.moe else None

    def router(self, i: int) -> nn.Module:
        """The top-k router of an MoE layer: one weight row per routed expert."""
        return self.mlp(i).gate

    def num_experts(self, i: int) -> int:
        experts = self.experts(i)
        return 0 if experts is None else experts.gate_up_proj.shape[0]

    @property
    def top_k(self) -> int:
        return self.config.num_experts_per_tok

    # --- weights ----------------------------------------------------------------------------
    def attention_weights(self, i: int) -> AttentionWeights:
        attn = self.attention(i)
        if self.family.fused_qkv:
            nq = self.num_heads(i) * self.head_dim
            nkv = self.num_kv_heads(i) * self.head_dim
            w = attn.qkv_proj.weight
            return AttentionWeights(w[:nq], w[nq : nq + nkv], w[nq + nkv :], attn.o_proj.weight)
        return AttentionWeights(
            attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight
        )

    def mlp_weights(self, i: int) -> MlpWeights:
        mlp = self.mlp(i)
        if self.family.fused_gate_up:
            n = self.intermediate_size(i)
            w = mlp.gate_up_proj.weight
            return MlpWeights(w[:n], w[n:], mlp.down_proj.weight)
        return MlpWeights(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)

    # --- running single residual blocks (block search, layer-wise calibration) ---------------
    def attention_type(self, i: int) -> str:
        """``full_attention`` or ``sliding_attention``, as the family's own model decides."""
        return getattr(self.layers[i], "attention_type", None) or layer_type(self.config, i)

    def block_inputs(self, hidden: torch.Tensor) -> dict[str, Any]:
        """What every block of this model needs for ``hidden`` ([batch, seq, dim]): rotary
        position embeddings and the causal masks (full and, where layers use one, sliding).
        They depend only on the batch's shape, device and dtype, so each is built once and
        reused by every later layer and batch of that shape (tables made under inference mode
        cannot take part in autograd, so training, block-local distillation, gets its own)."""
        key = (*hidden.shape[:2], hidden.device, hidden.dtype, torch.is_inference_mode_enabled())
        if key not in self._block_inputs:
            self._block_inputs[key] = self._new_block_inputs(hidden)
        return self._block_inputs[key]

    def _new_block_inputs(self, hidden: torch.Tensor) -> dict[str, Any]:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        seq = hidden.shape[1]
        position_ids = torch.arange(seq, device=hidden.device).unsqueeze(0)
        # (config, embeddings, mask, cache) by position: transformers 5.25 renamed the cache
        # argument (past_key_values -> cache), the order is that of every 5.x release
        mask_args = (self.config, hidden, None, None)
        types = {self.attention_type(i) for i in range(self.num_layers)}
        masks = {"full_attention": create_causal_mask(*mask_args, position_ids=position_ids)}
        if "sliding_attention" in types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(
                *mask_args, position_ids=position_ids)
        if self.family.rope_per_type:
            rotary = {kind: self.decoder.rotary_emb(hidden, position_ids, kind) for kind in types}
        else:
            rotary = dict.fromkeys(types, self.decoder.rotary_emb(hidden, position_ids=position_ids))
        return {"masks": masks, "position_ids": position_ids, "position_embeddings": rotary}

    def attention_block(self, i: int, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``hidden`` after layer ``i``'s attention residual block (unchanged when it is removed)."""
        attn = self.attention(i)
        if attn is None:
            return hidden
        kind = self.attention_type(i)
        out, _ = attn(
            hidden_states=self.input_norm(i)(hidden),
            attention_mask=inputs["masks"][kind],
            position_ids=inputs["position_ids"],
            position_embeddings=inputs["position_embeddings"][kind],
        )
        post = self.output_norm(i, "attention")
        return hidden + (out if post is None else post(out))

    def mlp_block(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` after layer ``i``'s MLP residual block (unchanged when it is removed)."""
        mlp = self.mlp(i)
        if mlp is None:
            return hidden
        out = mlp(self.post_attention_norm(i)(hidden))
        post = self.output_norm(i, "mlp")
        return hidden + (out if post is None else post(out))

    def layer_forward(self, i: int, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``hidden`` after decoder layer ``i``: through the model's own layer module when both
        blocks are there (the same kernels a plain forward runs), else block by block."""
        if self.attention(i) is None or self.mlp(i) is None:
            return self.mlp_block(i, self.attention_block(i, hidden, inputs))
        kind = self.attention_type(i)
        return self.layers[i](
            hidden,
            attention_mask=inputs["masks"][kind],
            position_ids=inputs["position_ids"],
            position_embeddings=inputs["position_embeddings"][kind],
            use_cache=False,
        )

    def head_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The LM head on final-normed states, soft-capped where the family caps its logits."""
        logits = self.lm_head(states)
        cap = self.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the last hidden states."""
        return self.head_logits(self.final_norm(hidden))
