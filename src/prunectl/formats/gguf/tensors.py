"""A model's weights as llama.cpp's GGUF tensors: names, row order and storage type.

Names come from the ``gguf`` package's own table (``gguf.TENSOR_NAMES``), so they are the ones
llama.cpp loads.  As in ``convert_hf_to_gguf.py``: Llama-architecture q/k rows (and Qwen2 q/k
biases under ``deci``) are permuted from Hugging Face's half-split RoPE layout to llama.cpp's
interleaved one; under ``phi3`` Phi-3's fused ``qkv_proj`` is ``attn_qkv`` and its ``gate_up_proj``
(gate rows, then up rows) is ``ffn_up``, both unchanged, while ``deci`` gets them split by the
adapter into q/k/v and gate/up; a tied ``lm_head`` is not written (llama.cpp reuses ``token_embd``); norms, biases
and other 1-D tensors stay F32; a matrix whose rows do not split into the out type's blocks (q8_0
and q4_0 ... q5_1 blocks are 32 wide, pruned widths often are not) falls back to F16, as the
converter and llama.cpp's quantizer do.  The ``gguf`` package quantizes the block types itself;
K-quants come from llama.cpp's own quantizer (``formats.gguf.quantize``).
"""

from __future__ import annotations

from collections.abc import Iterator

import gguf
import numpy as np
import torch

from prunectl.modeling.adapters import Adapter
from prunectl.formats.gguf.layout import GgufLayout

T = gguf.MODEL_TENSOR

OUTTYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q5_1": gguf.GGMLQuantizationType.Q5_1,
    "q5_0": gguf.GGMLQuantizationType.Q5_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


def tensor_name(kind: gguf.MODEL_TENSOR, suffix: str = "weight", layer: int | None = None) -> str:
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def interleave_rope_rows(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, reorder rows [x0..x(d/2-1), y0..] into llama.cpp's pairs [x0, y0, x1, y1, ...]."""
    shape = rows.shape
    return rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def llama3_rope_factors(config) -> torch.Tensor:
    """llama.cpp's ``rope_freqs`` for Llama-3 RoPE scaling: how much each frequency is divided,
    taken from transformers' own default and ``llama3`` inverse frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, device=torch.device("cpu"))
    plain, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config, device=torch.device("cpu"))
    return (plain / scaled).float()


def _bias(module, name: str) -> torch.Tensor | None:
    """The bias of projection ``name``, or None; Phi-3 has no separate q/k/v projections at all."""
    return getattr(getattr(module, name, None), "bias", None)


def _attention(adapter: Adapter, layout: GgufLayout, i: int) -> Iterator[tuple[str, torch.Tensor]]:
    spec = layout.layers[i]
    hidden, d = adapter.hidden_size, layout.head_dim
    if spec.zero_attention:
        yield tensor_name(T.ATTN_NORM, layer=i), torch.ones(hidden)
        for kind in (T.ATTN_Q, T.ATTN_K, T.ATTN_V):
            yield tensor_name(kind, layer=i), torch.zeros(spec.heads * d, hidden)
        yield tensor_name(T.ATTN_OUT, layer=i), torch.zeros(hidden, spec.heads * d)
        return
    if spec.heads == 0:
        return
    attn = adapter.attention(i)
    yield tensor_name(T.ATTN_NORM, layer=i), adapter.input_norm(i).weight
    if layout.fused:
        yield tensor_name(T.ATTN_QKV, layer=i), attn.qkv_proj.weight
        yield tensor_name(T.ATTN_OUT, layer=i), attn.o_proj.weight
        return
    weights = adapter.attention_weights(i)
    q, k = weights.q, weights.k
    q_bias = _bias(attn, "q_proj")
    k_bias = _bias(attn, "k_proj")
    if layout.permute_qk:
        q, k = interleave_rope_rows(q, spec.heads), interleave_rope_rows(k, spec.kv_heads)
        if q_bias is not None:
            q_bias = interleave_rope_rows(q_bias, spec.heads)
            k_bias = interleave_rope_rows(k_bias, spec.kv_heads)
    yield tensor_name(T.ATTN_Q, layer=i), q
    yield tensor_name(T.ATTN_K, layer=i), k
    yield tensor_name(T.ATTN_V, layer=i), weights.v
    for kind, bias in ((T.ATTN_Q, q_bias), (T.ATTN_K, k_bias), (T.ATTN_V, _bias(attn, "v_proj")),
                       (T.ATTN_OUT, attn.o_proj.bias)):
        if bias is not None:
            yield tensor_name(kind, "bias", i), bias
    yield tensor_name(T.ATTN_OUT, layer=i), weights.o
    if getattr(attn, "q_norm", None) is not None:  # Qwen3's per-head q/k norms
        yield tensor_name(T.ATTN_Q_NORM, layer=i), attn.q_norm.weight
        yield tensor_name(T.ATTN_K_NORM, layer=i), attn.k_norm.weight


def _mlp(adapter: Adapter, layout: GgufLayout, i: int) -> Iterator[tuple[str, torch.Tensor]]:
    spec = layout.layers[i]
    hidden = adapter.hidden_size
    if spec.zero_mlp:
        yield tensor_name(T.FFN_NORM, layer=i), torch.ones(hidden)
        yield tensor_name(T.FFN_GATE, layer=i), torch.zeros(spec.ffn, hidden)
        yield tensor_name(T.FFN_UP, layer=i), torch.zeros(spec.ffn, hidden)
        yield tensor_name(T.FFN_DOWN, layer=i), torch.zeros(hidden, spec.ffn)
        return
    if spec.ffn == 0:
        return
    weights = adapter.mlp_weights(i)
    yield tensor_name(T.FFN_NORM, layer=i), adapter.post_attention_norm(i).weight
    if layout.fused:  # llama.cpp splits ffn_up's rows itself: the first half is the gate
        yield tensor_name(T.FFN_UP, layer=i), adapter.mlp(i).gate_up_proj.weight
    else:
        yield tensor_name(T.FFN_GATE, layer=i), weights.gate
        yield tensor_name(T.FFN_UP, layer=i), weights.up
    yield tensor_name(T.FFN_DOWN, layer=i), weights.down
    if adapter.down_proj(i).bias is not None:
        yield tensor_name(T.FFN_DOWN, "bias", i), adapter.down_proj(i).bias


def gguf_tensors(model, layout: GgufLayout) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor llama.cpp reads for ``layout``, by GGUF name, in the converter's order."""
    adapter = Adapter(model)
    yield tensor_name(T.TOKEN_EMBD), adapter.embed_tokens.weight
    if layout.rope_type == "llama3":
        yield tensor_name(T.ROPE_FREQS), llama3_rope_factors(model.config)
    for i in range(adapter.num_layers):
        yield from _attention(adapter, layout, i)
        yield from _mlp(adapter, layout, i)
    yield tensor_name(T.OUTPUT_NORM), adapter.final_norm.weight
    if not layout.tied_embeddings:
        yield tensor_name(T.OUTPUT), adapter.lm_head.weight


def storage_type(name: str, array: np.ndarray, outtype: str) -> gguf.GGMLQuantizationType:
    """The converter's rule: 1-D tensors and norms F32, other weights the requested type."""
    if array.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return OUTTYPES[outtype]


def encode(name: str, tensor: torch.Tensor, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The bytes (or array) to store for one tensor, and their GGML type."""
    array = tensor.detach().to(torch.float32).cpu().contiguous().numpy()
    qtype = storage_type(name, array, outtype)
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16
