"""Modeling code for structurally pruned Llama-family and Gemma 2/3 models whose layers differ.

This file is copied next to every non-uniform checkpoint prunectl writes and is named in its
``config.json`` ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
loads the checkpoint without prunectl installed.  It therefore imports only torch and transformers.

The config is the family's own config (``model_type`` unchanged) with ``per_layer_config`` in the
format of transformers' heterogeneous configs (``transformers.integrations.heterogeneity``):
per-layer overrides of ``num_attention_heads``, ``num_key_value_heads`` and ``intermediate_size``,
and ``skip: ["attention"]`` / ``skip: ["mlp"]`` for a removed residual block.  Two per-layer keys
are ours, since that format has nothing for them: ``o_proj_bias`` and ``down_proj_bias`` (true
when the layer's attention / MLP output projection carries a bias, e.g. FLAP's compensation).
Upstream transformers modeling does not read ``per_layer_config`` yet; once it does, the same
config should load natively.  ``auto_map`` also names a config subclass per family: the stock
configs' rules derive ``head_dim`` from the head count and read per-layer head counts from the
global config, which transformers forbids under ``per_layer_config`` (see ``PrunedConfigMixin``).

Each decoder layer is built from the family's own attention, MLP and norm classes with that
layer's config; Gemma's blocks also normalise their output (``SANDWICH_NORMS``), its embedding
is scaled by ``sqrt(hidden_size)``, and Gemma 3 rotates local and global layers with different
bases.  A layer without attention holds no weights for it and has no slot in the KV cache: the
cache holds the attention layers alone, in order (attention ``k`` of the stack writes slot ``k``),
so slot 0 is always one with attention and transformers' public ``get_seq_length()`` and mask
sizes read real positions even when layer 0 has no attention, in every transformers 5 release
(no internal placeholder slot whose methods change between minor releases).  transformers 5.25
renamed the cache argument and output field ``past_key_values`` to ``cache`` (the old name is
deprecated until 5.40): this decoder takes either, passes the cache to the family's attention
and mask functions by position (the same in every 5.x release) and returns it under the name
its release's output classes have (``CACHE``).
"""

from __future__ import annotations

import copy
import dataclasses
import types

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, MoeModelOutputWithPast
from transformers.models.gemma2 import modeling_gemma2 as gemma2
from transformers.models.gemma3 import modeling_gemma3 as gemma3
from transformers.models.llama import modeling_llama as llama
from transformers.models.mistral import modeling_mistral as mistral
from transformers.models.mixtral import modeling_mixtral as mixtral
from transformers.models.olmoe import modeling_olmoe as olmoe
from transformers.models.phi3 import modeling_phi3 as phi3
from transformers.models.qwen2 import modeling_qwen2 as qwen2
from transformers.models.qwen3 import modeling_qwen3 as qwen3
from transformers.models.qwen2_moe import modeling_qwen2_moe as qwen2_moe
from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

#: what this transformers release calls the KV cache, as argument and output field
CACHE = ("cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
         else "past_key_values")

SKIP_ATTENTION = "attention"
SKIP_MLP = "mlp"
O_PROJ_BIAS = "o_proj_bias"
DOWN_PROJ_BIAS = "down_proj_bias"

#: the norms of each residual block, by attribute name: (on its input, on its output or None)
PRE_NORMS = {"attention": ("input_layernorm", None), "mlp": ("post_attention_layernorm", None)}
#: Gemma 2/3 also normalise each block's output before the residual add ("sandwich" norms)
SANDWICH_NORMS = {"attention": ("input_layernorm", "post_attention_layernorm"),
                  "mlp": ("pre_feedforward_layernorm", "post_feedforward_layernorm")}

MASK_FUNCTIONS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


def layer_type(config, index: int) -> str:
    """The attention type of layer ``index``: ``layer_types`` when the family has it (Qwen), else
    sliding when a ``sliding_window`` is set (Mistral, Phi-3), as the stock models decide."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[index]
    return "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"


def given_cache(cache, past_key_values):
    """The cache, under whichever name the caller's transformers release used."""
    return cache if cache is not None else past_key_values


def with_bias(linear: nn.Linear) -> nn.Linear:
    """The same projection with a (zero) bias, for layers whose saved output projection has one."""
    if linear.bias is not None:
        return linear
    new = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight)
        new.bias.zero_()
    return new


class PrunedDecoderLayer(GradientCheckpointingLayer):
    """A decoder layer of one family whose attention and/or MLP residual block may be absent."""

    def __init__(self, parts: dict, config, layer_idx: int):
        super().__init__()
        skip = set(getattr(config, "skip", None) or ())
        self.attention_type = layer_type(config, layer_idx)
        #: the window a sliding layer's cache keeps (None: every position)
        self.sliding_window = (getattr(config, "sliding_window", None)
                               if self.attention_type == "sliding_attention" else None)
        dropout = getattr(config, "resid_pdrop", 0.0)  # Phi-3 only; zero elsewhere
        self.norm_names = parts.get("norms", PRE_NORMS)
        if SKIP_ATTENTION not in skip:
            self._add_norms(parts["norm"], config, "attention")
            self.self_attn = parts["attention"](config=config, layer_idx=layer_idx)
            if getattr(config, O_PROJ_BIAS, False):
                self.self_attn.o_proj = with_bias(self.self_attn.o_proj)
            self.resid_attn_dropout = nn.Dropout(dropout)
        if SKIP_MLP not in skip:
            self._add_norms(parts["norm"], config, "mlp")
            self.mlp = parts["mlp"](config)
            if getattr(config, DOWN_PROJ_BIAS, False):
                self.mlp.down_proj = with_bias(self.mlp.down_proj)
            self.resid_mlp_dropout = nn.Dropout(dropout)

    def _add_norms(self, norm_class, config, block: str) -> None:
        for name in self.norm_names[block]:
            if name is not None:
                setattr(self, name, norm_class(config.hidden_size, eps=config.rms_norm_eps))

    def _norm(self, block: str, end: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` through the block's input (``end`` 0) or output (1) norm, where it has one."""
        name = self.norm_names[block][end]
        return hidden if name is None else getattr(self, name)(hidden)

    @property
    def has_attention(self) -> bool:
        return hasattr(self, "self_attn")

    @property
    def has_mlp(self) -> bool:
        return hasattr(self, "mlp")

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, cache=None, **kwargs):
        if self.has_attention:
            attn_out, _ = self.self_attn(  # (hidden, rotary, mask, cache): every 5.x release
                self._norm("attention", 0, hidden_states),
                position_embeddings,
                attention_mask,
                given_cache(cache, past_key_values),
                position_ids=position_ids,
                use_cache=use_cache,
                **kwargs,
            )
            attn_out = self._norm("attention", 1, attn_out)
            hidden_states = hidden_states + self.resid_attn_dropout(attn_out)
        if self.has_mlp:
            mlp_out = self._norm("mlp", 1, self.mlp(self._norm("mlp", 0, hidden_states)))
            hidden_states = hidden_states + self.resid_mlp_dropout(mlp_out)
        return hidden_states


class PrunedDecoderMixin:
    """The decoder stack (embeddings, per-layer-configured layers, norm, rotary) and its forward,
    written once for every family; ``parts`` names the family's building blocks."""

    parts: dict
    output_class = BaseModelOutputWithPast
    _no_split_modules = ["PrunedDecoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = self.parts.get("embedding", plain_embedding)(config, self.padding_idx)
        self.layers = nn.ModuleList(
            [PrunedDecoderLayer(self.parts, config.per_layer_config[i], i)
             for i in range(config.num_hidden_layers)]
        )
        self.norm = self.parts["norm"](config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = self.parts["rotary"](config=config)
        self.gradient_checkpointing = False
        attention = [layer for layer in self.layers if layer.has_attention]
        for slot, layer in enumerate(attention):  # the attention modules index the cache by it
            layer.self_attn.layer_idx = slot
        self.post_init()

    def _cache_slots(self) -> list:
        """Fresh cache slots: one per attention layer, in order; sliding layers keep a window."""
        return [DynamicSlidingWindowLayer(sliding_window=layer.sliding_window)
                if layer.sliding_window else DynamicLayer()
                for layer in self.layers if layer.has_attention]

    def _fit_cache(self, cache) -> None:
        """Lay out a ``DynamicCache`` built elsewhere (``generate`` builds one per decoder layer
        from the config) as this model's slots, before anything is stored in it."""
        if not isinstance(cache, DynamicCache):
            return
        fresh = self._cache_slots()

        def layout(slots):
            return [(type(slot), getattr(slot, "sliding_window", None)) for slot in slots]

        if layout(cache.layers) == layout(fresh):
            return
        if any(getattr(slot, "keys", None) is not None and slot.keys.numel()
               for slot in cache.layers):
            raise ValueError("past_key_values holds states laid out for another model; pass a "
                             "new DynamicCache()")
        cache.layers[:] = fresh

    def _position_embeddings(self, hidden_states, position_ids) -> dict:
        """Rotary cos/sin per attention type: Gemma 3 rotates local and global layers with
        different bases, the other families use one rotation for all."""
        kinds = {layer.attention_type for layer in self.layers}
        if self.parts.get("rope_per_type"):
            return {kind: self.rotary_emb(hidden_states, position_ids, kind) for kind in kinds}
        shared = self.rotary_emb(hidden_states, position_ids=position_ids)
        return dict.fromkeys(kinds, shared)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs) -> BaseModelOutputWithPast:
        past_key_values = given_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if past_key_values is not None:
            self._fit_cache(past_key_values)
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + seen
            position_ids = position_ids.unsqueeze(0)
        masks = attention_mask
        if not isinstance(masks, dict):  # ``generate`` may have prepared them already
            arguments = (self.config, inputs_embeds, attention_mask, past_key_values)  # by position
            types = {layer.attention_type for layer in self.layers if layer.has_attention}
            masks = {kind: MASK_FUNCTIONS[kind](*arguments, position_ids=position_ids)
                     for kind in types}
        kwargs.pop("output_attentions", None)  # not recorded by this decoder
        kwargs.pop("output_router_logits", None)  # nor are MoE router logits
        record = kwargs.pop("output_hidden_states", None)
        record = self.config.output_hidden_states if record is None else record
        recorded = []  # as the stock models: each layer's input, then the final normed output
        hidden_states = inputs_embeds
        position_embeddings = self._position_embeddings(hidden_states, position_ids)
        for layer in self.layers:
            if record:
                recorded.append(hidden_states)
            hidden_states = layer(
                hidden_states,
                attention_mask=masks.get(layer.attention_type),
                position_embeddings=position_embeddings[layer.attention_type],
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE: past_key_values},  # the name gradient checkpointing clears
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return self.output_class(
            last_hidden_state=hidden_states,
            hidden_states=(*recorded, hidden_states) if record else None,
            **{CACHE: past_key_values if use_cache else None},
        )


class PrunedCausalLMMixin:
    """The family's ``*ForCausalLM`` (forward, generation, tied head) over the pruned decoder."""

    decoder_class: type

    def __init__(self, config):
        # skip the stock ``*ForCausalLM.__init__``: it would build a uniform decoder
        super(self.causal_lm_class, self).__init__(config)
        self.model = self.decoder_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


def _heads_for_rules(hidden_size: int, head_dim: int) -> int:
    """The head count stock config rules assume (``hidden_size == heads * head_dim``)."""
    return hidden_size // head_dim if hidden_size % head_dim == 0 else 1


class PrunedConfigMixin:
    """A family config that accepts any head count next to an explicit ``head_dim``.

    Stock rules derive ``head_dim`` as ``hidden_size // num_attention_heads`` (Llama refuses a
    count that does not divide, Phi-3 checks its rope factors with it) and, under
    ``per_layer_config``, read the per-layer head count from the global config, which transformers
    forbids.  Pruned checkpoints always state ``head_dim``, so the rules run on a view whose head
    count is ``hidden_size // head_dim``; everything else is the family's own config.
    """

    def __init__(self, **kwargs):
        per_layer = kwargs.pop("per_layer_config", None)
        heads = kwargs.get("num_attention_heads")
        if heads is not None and kwargs.get("head_dim"):
            if kwargs.get("num_key_value_heads") is None:
                kwargs["num_key_value_heads"] = heads
            kwargs["num_attention_heads"] = _heads_for_rules(kwargs["hidden_size"], kwargs["head_dim"])
            super().__init__(**kwargs)
            self.num_attention_heads = heads
        else:
            super().__init__(**kwargs)
        if per_layer is not None:
            self.per_layer_config = per_layer

    def validate(self):
        view = copy.copy(self)
        view.__dict__.pop("_heterogeneity_spec", None)
        view.num_attention_heads = _heads_for_rules(self.hidden_size, self.head_dim)
        for validator in type(self).__class_validators__:
            validator(view)


def plain_embedding(config, padding_idx) -> nn.Embedding:
    return nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)


def scaled_embedding(embedding_class):
    """Gemma's embedding, which multiplies by ``sqrt(hidden_size)`` as the stock model does."""
    def build(config, padding_idx):
        return embedding_class(config.vocab_size, config.hidden_size, padding_idx,
                               embed_scale=config.hidden_size**0.5)
    return build


def _parts(module, prefix: str, **extra) -> dict:
    return {
        "attention": getattr(module, f"{prefix}Attention"),
        "mlp": getattr(module, f"{prefix}MLP"),
        "norm": getattr(module, f"{prefix}RMSNorm"),
        "rotary": getattr(module, f"{prefix}RotaryEmbedding"),
        **extra,
    }


def _gemma_parts(module, prefix: str, **extra) -> dict:
    return _parts(module, prefix, norms=SANDWICH_NORMS,
                  embedding=scaled_embedding(getattr(module, f"{prefix}TextScaledWordEmbedding")),
                  **extra)


class MoeMlp:
    """Builds the MLP block of an MoE family's layer: its routed experts, sized by the layer
    config's expert count (which may differ per layer), or, where that count is 0 (Qwen-MoE
    ``mlp_only_layers``), the family's dense MLP."""

    def __init__(self, sparse: type, dense: type | None = None):
        self.sparse, self.dense = sparse, dense

    def __call__(self, config) -> nn.Module:
        if self.dense is not None and not config.num_experts:
            return self.dense(config, intermediate_size=config.intermediate_size)
        return self.sparse(config)


class ExpertsImplementationMixin:
    """The routed experts are the family's own classes, which dispatch on
    ``config._experts_implementation`` (``grouped_mm`` by default); transformers decides that by
    reading the model's module source for its decorator, which this file does not repeat."""

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        return True


class PrunedMoeDecoderMixin(ExpertsImplementationMixin, PrunedDecoderMixin):
    """The pruned decoder of an MoE family; its output has the MoE fields (router logits are
    not recorded, so they stay None)."""

    output_class = MoeModelOutputWithPast


class PrunedMoeCausalLMMixin(ExpertsImplementationMixin, PrunedCausalLMMixin):
    """The family's MoE ``*ForCausalLM`` over the pruned decoder."""


def _moe_parts(module, prefix: str, dense: bool) -> dict:
    """``_parts`` of an MoE family (Mixtral has no dense MLP class)."""
    return {
        "attention": getattr(module, f"{prefix}Attention"),
        "mlp": MoeMlp(getattr(module, f"{prefix}SparseMoeBlock"),
                      getattr(module, f"{prefix}MLP") if dense else None),
        "norm": getattr(module, f"{prefix}RMSNorm"),
        "rotary": getattr(module, f"{prefix}RotaryEmbedding"),
    }


def _declare(module, prefix: str, parts: dict, moe: bool = False, text: str = "",
             **decoder) -> type:
    """The pruned classes of one family, ``Pruned{prefix}{text}Config``, ``...Model`` and
    ``Pruned{prefix}ForCausalLM`` over the family's own ``{prefix}{text}Config``,
    ``{prefix}PreTrainedModel`` and ``{prefix}ForCausalLM``, bound as names of this module (what
    ``auto_map`` names); returns the ``*ForCausalLM``."""
    stock = getattr(module, f"{prefix}ForCausalLM")
    config = _named(f"Pruned{prefix}{text}Config",
                    (PrunedConfigMixin, getattr(module, f"{prefix}{text}Config")), {})
    model = _named(f"Pruned{prefix}{text}Model",
                   (PrunedMoeDecoderMixin if moe else PrunedDecoderMixin,
                    getattr(module, f"{prefix}PreTrainedModel")),
                   {"config_class": config, "parts": parts, **decoder})
    return _named(f"Pruned{prefix}ForCausalLM",
                  (PrunedMoeCausalLMMixin if moe else PrunedCausalLMMixin, stock),
                  {"config_class": config, "decoder_class": model, "causal_lm_class": stock})


def _named(name: str, bases: tuple[type, ...], namespace: dict) -> type:
    """A class declared as if written here under ``name`` (its module and qualified name are
    this module's, so transformers and pickle find it by name)."""
    cls = types.new_class(name, bases, exec_body=lambda body: body.update(
        {"__module__": __name__, "__qualname__": name, **namespace}))
    globals()[name] = cls
    return cls


PRUNED_CLASSES = {
    "llama": _declare(llama, "Llama", _parts(llama, "Llama")),
    "mistral": _declare(mistral, "Mistral", _parts(mistral, "Mistral")),
    "qwen2": _declare(qwen2, "Qwen2", _parts(qwen2, "Qwen2")),
    "qwen3": _declare(qwen3, "Qwen3", _parts(qwen3, "Qwen3")),
    "phi3": _declare(phi3, "Phi3", _parts(phi3, "Phi3")),
    "qwen2_moe": _declare(qwen2_moe, "Qwen2Moe", _moe_parts(qwen2_moe, "Qwen2Moe", dense=True),
                          moe=True),
    "qwen3_moe": _declare(qwen3_moe, "Qwen3Moe", _moe_parts(qwen3_moe, "Qwen3Moe", dense=True),
                          moe=True),
    "mixtral": _declare(mixtral, "Mixtral", _moe_parts(mixtral, "Mixtral", dense=False), moe=True),
    "olmoe": _declare(olmoe, "Olmoe", _moe_parts(olmoe, "Olmoe", dense=False), moe=True),
    "gemma2": _declare(gemma2, "Gemma2", _gemma_parts(gemma2, "Gemma2")),
    "gemma3_text": _declare(gemma3, "Gemma3", _gemma_parts(gemma3, "Gemma3", rope_per_type=True),
                            text="Text", input_modalities=("text",)),
}


def pruned_config_class_for(model_type: str) -> type:
    """The config class the pruned model of ``model_type`` is built with."""
    return pruned_class_for(model_type).config_class


def pruned_class_for(model_type: str) -> type:
    """The pruned ``*ForCausalLM`` class of a ``config.model_type``."""
    if model_type not in PRUNED_CLASSES:
        raise ValueError(f"no pruned model class for model_type '{model_type}'")
    return PRUNED_CLASSES[model_type]
