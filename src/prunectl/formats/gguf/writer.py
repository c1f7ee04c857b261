"""Write a (pruned) model as one GGUF file that llama.cpp loads: hyper-parameters, tokenizer, tensors.

Keys follow ``convert_hf_to_gguf.py`` for the architecture chosen by ``gguf_layout``; under
``deci`` the head counts and MLP widths are per-layer arrays (0 = block absent).  ``check_gguf``
raises every refusal before a byte is written; ``write_gguf`` writes to ``<file>.tmp`` and renames,
so a failed export never leaves a half-written model behind.  K-quants are an f16 file run
through llama.cpp's ``llama-quantize`` (``gguf_quantize``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from prunectl.errors import UserError
from prunectl.formats.gguf.layout import GgufLayout, gguf_layout
from prunectl.formats.gguf.quantize import K_QUANTS, fallbacks, find_quantizer, quantize
from prunectl.formats.gguf.tensors import FILE_TYPES, OUTTYPES, encode, gguf_tensors
from prunectl.formats.gguf.vocab import check_name_and_vocab, check_vocab, copy_vocab, write_vocab


@dataclass
class GgufResult:
    path: Path
    arch: str
    tensors: int
    warnings: list[str] = field(default_factory=list)
    #: matrices the out type could not hold (rows not a multiple of its block) -> stored type
    fallbacks: dict[str, str] = field(default_factory=dict)


def outtypes() -> list[str]:
    """Every ``--outtype``: those written here, then llama-quantize's K-quants."""
    return [*OUTTYPES, *K_QUANTS]


def check_gguf(model, tokenizer: Any, outtype: str, vocab_source: Path | None, name: str = "") -> GgufLayout:
    """The layout to write, after every check that could refuse the export (``name``: the
    ``general.name`` to write, which llama.cpp's vocabulary loader also reads)."""
    if outtype not in outtypes():
        raise UserError(f"unknown GGUF out type '{outtype}'; choose one of {', '.join(outtypes())}")
    if outtype in K_QUANTS:
        find_quantizer(outtype)
    layout = gguf_layout(model)
    if vocab_source is None:
        if tokenizer is None:
            raise UserError("the model has no tokenizer, which a GGUF file must carry; "
                            "export with --format hf instead")
        check_vocab(tokenizer)
        check_name_and_vocab(name, tokenizer)
    return layout


def _per_layer(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def _add_hparams(writer: gguf.GGUFWriter, model, layout: GgufLayout, name: str, outtype: str) -> None:
    config = model.config
    layers = layout.layers
    writer.add_name(name)
    writer.add_block_count(len(layers))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(model.get_input_embeddings().weight.shape[1])
    if layout.arch == "deci":
        writer.add_feed_forward_length([layer.ffn for layer in layers])
        writer.add_head_count([layer.heads for layer in layers])
        writer.add_head_count_kv([layer.kv_heads for layer in layers])
    else:
        writer.add_feed_forward_length(layers[0].ffn)
        writer.add_head_count(layers[0].heads)
        writer.add_head_count_kv(layers[0].kv_heads)
    params = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(params.get("full_attention", params).get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
    if layout.permute_qk or layout.fused:
        writer.add_rope_dimension_count(layout.head_dim)
    if layout.fused:
        _add_phi3_hparams(writer, config)


def _add_phi3_hparams(writer: gguf.GGUFWriter, config) -> None:
    """The keys convert_hf_to_gguf adds for Phi-3: the pre-training context (which LongRoPE would
    scale from) and the window, which llama.cpp's ``phi3`` loader reads and then disables."""
    params = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_scaling_orig_ctx_len(params.get(
        "original_max_position_embeddings",
        getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings))
    writer.add_sliding_window(config.sliding_window or 0)


def write_gguf(model, tokenizer: Any, path: Path, outtype: str = "f16", name: str = "",
               vocab_source: Path | None = None) -> GgufResult:
    """Write ``model`` to ``path``.  ``vocab_source``: the GGUF file the dense model was read from,
    whose tokenizer keys are copied; otherwise ``tokenizer`` is converted.  A K-quant is written
    as f16 first, then quantized by llama.cpp."""
    path = Path(path)
    name = name or path.stem
    layout = check_gguf(model, tokenizer, outtype, vocab_source, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if outtype in K_QUANTS:
        tool, f16 = find_quantizer(outtype), path.with_name(path.name + ".f16.tmp")
        try:
            result = write_gguf(model, tokenizer, f16, "f16", name, vocab_source)
            tmp = path.with_name(path.name + ".tmp")
            try:
                quantize(tool, f16, tmp, outtype)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            f16.unlink(missing_ok=True)
        return GgufResult(path, result.arch, result.tensors, result.warnings,
                          fallbacks(path, outtype))
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, layout.arch)
    warnings: list[str] = []
    try:
        _add_hparams(writer, model, layout, name, outtype)
        if vocab_source is not None:
            copy_vocab(writer, vocab_source)
        else:
            warnings += write_vocab(writer, tokenizer, model.get_input_embeddings().weight.shape[0])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        count = 0
        for tensor_name, tensor in gguf_tensors(model, layout):
            data, qtype = encode(tensor_name, tensor, outtype)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GgufResult(path, layout.arch, count, warnings, fallbacks(path, outtype))
