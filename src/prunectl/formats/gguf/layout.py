"""Which llama.cpp architecture a (pruned) model becomes in GGUF, and what llama.cpp cannot run.

A uniform result (every layer keeps both blocks, equal head, KV-head and MLP counts, no bias the
family lacks) keeps its family's own architecture, as llama.cpp's ``convert_hf_to_gguf.py`` would
write it: Llama and Mistral → ``llama``, Qwen2 → ``qwen2``, Qwen3 → ``qwen3``, Phi-3 → ``phi3``
(fused ``attn_qkv`` and gate+up ``ffn_up``); llama.cpp's ``qwen2`` and ``phi3`` loaders insist on
heads x head size = hidden size, so such a result with fewer heads goes to ``deci`` too.  Anything
else of the Llama family (Llama, Mistral, Qwen2, and Phi-3 with its fused projections split)
becomes ``deci``, the architecture llama.cpp runs NVIDIA's
Nemotron-NAS models with: per-layer ``head_count``, ``head_count_kv`` and ``feed_forward_length``,
optional output-projection biases (FLAP's compensation) and q/k/v biases (Qwen2).

Two gaps in llama.cpp's ``deci`` graph (``src/models/deci.cpp``) are bridged with exact zero
blocks rather than refused, because BlockPruner produces both shapes routinely:

- ``feed_forward_length = 0`` makes llama.cpp skip the *whole* layer (it ``continue``s before
  adding the attention output), so a layer that keeps attention but lost its MLP is written with
  an MLP of width 1 whose weights are all zero: it adds exactly 0.
- llama.cpp derives the head size from layer 0's head count (``n_head(0)``) and sets it to 0
  when layer 0 has no attention, so a removed attention in layer 0 is written as one zero head
  (q, k, v and output weights 0): softmax-weighted zero values, projected by zeros, add exactly 0.

Refused, before anything is written: Qwen3 non-uniform results (``deci`` has no per-head q/k
norms), RoPE scaling other than none and ``llama3`` (Phi-3: none only, e.g. no LongRoPE factors;
no partial rotary factor), and
Qwen2 sliding-window layers (llama.cpp's ``qwen2``/``deci`` run full attention; Mistral's window is
dropped as llama.cpp's converter drops it, and Phi-3's as llama.cpp's ``phi3`` loader disables it,
so outputs agree up to the window length).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunectl.errors import UserError
from prunectl.modeling.adapters import Adapter

#: the family's own llama.cpp architecture for uniform results (convert_hf_to_gguf's choice)
UNIFORM_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}
#: families whose non-uniform results llama.cpp's ``deci`` graph computes exactly
DECI_FAMILIES = ("llama", "mistral", "qwen2", "phi3")
#: architectures whose llama.cpp loader wants heads x head size = hidden size (``src/models/qwen2.cpp``, ``phi3.cpp``)
FULL_WIDTH_ATTENTION_ARCHS = ("qwen2", "phi3")
#: architectures that store q/k/v as one ``attn_qkv`` and gate+up as one ``ffn_up`` (Phi-3's own layout)
FUSED_ARCHS = ("phi3",)
#: families whose window llama.cpp ignores, as its converter or loader does (outputs agree up to it)
WINDOW_DROPPED = ("mistral", "phi3")
#: families whose q/k rows llama.cpp wants in its interleaved RoPE order (the converter permutes)
PERMUTED_ARCHS = ("llama", "deci")
ROPE_TYPES = ("default", "llama3")
#: Phi-3: llama.cpp's ``phi3`` graph reads only LongRoPE factors, not ``rope_freqs``; not written here
PHI3_ROPE_TYPES = ("default",)
#: width of the all-zero MLP that stands for a removed MLP next to a kept attention in ``deci``
ZERO_MLP_WIDTH = 1
#: query and KV heads of the all-zero attention that stands for a removed attention in layer 0
ZERO_ATTENTION_HEADS = 1

HF_HINT = "export with --format hf instead"


@dataclass(frozen=True)
class LayerLayout:
    """One layer as written: head counts and MLP width (0 = block absent), zero placeholders,
    and which output projections carry a bias."""

    heads: int
    kv_heads: int
    ffn: int
    zero_attention: bool = False
    zero_mlp: bool = False
    o_bias: bool = False
    down_bias: bool = False


@dataclass(frozen=True)
class GgufLayout:
    arch: str
    family: str
    head_dim: int
    layers: tuple[LayerLayout, ...]
    tied_embeddings: bool
    rope_type: str

    @property
    def permute_qk(self) -> bool:
        return self.arch in PERMUTED_ARCHS

    @property
    def fused(self) -> bool:
        return self.arch in FUSED_ARCHS


def _has_bias(module) -> bool:
    return module is not None and getattr(module, "bias", None) is not None


def _rope_type(config, family: str) -> str:
    """The RoPE type, refused where the written file would rotate differently from the model."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    rope_type = params.get("rope_type", "default")
    allowed = PHI3_ROPE_TYPES if family == "phi3" else ROPE_TYPES
    if rope_type not in allowed:
        raise UserError(f"GGUF export of {family} supports RoPE types {', '.join(allowed)}, not "
                        f"'{rope_type}'; {HF_HINT}")
    if params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) != 1.0:
        raise UserError(f"GGUF export of {family} does not write a partial rotary factor; {HF_HINT}")
    return rope_type


def _check_attention_types(adapter: Adapter) -> None:
    if adapter.family.name in WINDOW_DROPPED:
        return  # llama.cpp runs these windows as full attention too (see the module doc)
    for i in range(adapter.num_layers):
        if adapter.attention(i) is not None and adapter.attention_type(i) != "full_attention":
            raise UserError(f"layer {i} uses sliding-window attention, which llama.cpp's GGUF "
                            f"architectures for {adapter.family.name} do not; {HF_HINT}")


def _raw_layers(adapter: Adapter) -> list[LayerLayout]:
    layers = []
    for i in range(adapter.num_layers):
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        layers.append(LayerLayout(
            heads=adapter.num_heads(i), kv_heads=adapter.num_kv_heads(i),
            ffn=adapter.intermediate_size(i),
            o_bias=attn is not None and _has_bias(attn.o_proj),
            down_bias=mlp is not None and _has_bias(mlp.down_proj),
        ))
    return layers


def _is_uniform(layers: list[LayerLayout]) -> bool:
    first = layers[0]
    return first.heads > 0 and first.ffn > 0 and all(
        (layer.heads, layer.kv_heads, layer.ffn, layer.o_bias, layer.down_bias)
        == (first.heads, first.kv_heads, first.ffn, False, False) for layer in layers)


def _deci_layers(layers: list[LayerLayout]) -> tuple[LayerLayout, ...]:
    """Per-layer arrays for ``deci``, with the zero placeholders described in the module doc."""
    out = []
    for i, layer in enumerate(layers):
        if layer.heads == 0 and i == 0:
            layer = LayerLayout(ZERO_ATTENTION_HEADS, ZERO_ATTENTION_HEADS, layer.ffn,
                                zero_attention=True, down_bias=layer.down_bias)
        if layer.ffn == 0 and layer.heads > 0:
            layer = LayerLayout(layer.heads, layer.kv_heads, ZERO_MLP_WIDTH,
                                zero_attention=layer.zero_attention, zero_mlp=True,
                                o_bias=layer.o_bias)
        out.append(layer)
    return tuple(out)


def gguf_layout(model) -> GgufLayout:
    """The architecture and per-layer layout for ``model``, or a UserError saying what to change."""
    adapter = Adapter(model)
    family = adapter.family.name
    if family not in UNIFORM_ARCH:
        raise UserError(f"GGUF export of {family} models is not implemented; {HF_HINT}")
    rope_type = _rope_type(model.config, family)
    _check_attention_types(adapter)
    layers = _raw_layers(adapter)
    tied = adapter.lm_head.weight is adapter.embed_tokens.weight
    arch = UNIFORM_ARCH[family]
    full_width = layers[0].heads * adapter.head_dim == adapter.hidden_size
    if _is_uniform(layers) and (full_width or arch not in FULL_WIDTH_ATTENTION_ARCHS):
        return GgufLayout(arch, family, adapter.head_dim, tuple(layers), tied, rope_type)
    if family not in DECI_FAMILIES:
        raise UserError(f"this {family} result has layers of different shapes; llama.cpp runs those "
                        f"only as 'deci', which has no per-head q/k norms; prune uniformly "
                        f"(same heads and MLP width in every layer, no removed blocks) or {HF_HINT}")
    return GgufLayout("deci", family, adapter.head_dim, _deci_layers(layers), tied, rope_type)
