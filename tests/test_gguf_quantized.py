"""Quantized GGUF: q4_0 ... q8_0 written by the ``gguf`` package re-read with GGUFReader and
dequantized to within one quantization step of the model's weights; matrices whose rows the
blocks do not divide fall back to F16 and are listed; K-quants through llama.cpp's quantizer
(opt-in: needs a libllama or llama-quantize) and a clear exit 2 where none is found."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml
from helpers import tiny_model
from gguf_models import VOCAB, bpe_tokenizer
from typer.testing import CliRunner

from prunectl.cli import app
from prunectl.errors import UserError
from prunectl.formats.gguf.layout import gguf_layout
from prunectl.formats.gguf.tensors import gguf_tensors
from prunectl.formats.gguf.writer import write_gguf

# levels per block: the step is amax / (levels / 2) for the symmetric types, (max - min) / levels
# for the ones with a minimum; an element is off by at most one step (the clamped extreme)
STEPS = {"q8_0": ("amax", 127), "q5_1": ("range", 31), "q5_0": ("amax", 16),
         "q4_1": ("range", 15), "q4_0": ("amax", 8)}
INTERMEDIATE = 80  # ffn_down rows of 80 values: not a multiple of 32, so F16


def expected_tensors(model) -> dict[str, np.ndarray]:
    return {name: t.detach().float().numpy() for name, t in gguf_tensors(model, gguf_layout(model))}


def within_one_step(stored: np.ndarray, weight: np.ndarray, outtype: str) -> bool:
    kind, levels = STEPS[outtype]
    blocks = weight.reshape(-1, 32)
    if kind == "amax":
        step = np.abs(blocks).max(axis=1, keepdims=True) / levels
    else:
        step = (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)) / levels
    error = np.abs(stored.reshape(-1, 32) - blocks)
    return bool((error <= step * 1.01 + 1e-6).all())


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, vocab_size=VOCAB, intermediate_size=INTERMEDIATE)


@pytest.mark.parametrize("outtype", list(STEPS))
def test_block_types_dequantize_to_the_weights_and_list_the_fallbacks(model, tmp_path, outtype):
    result = write_gguf(model, bpe_tokenizer(), tmp_path / "m.gguf", outtype)
    weights = expected_tensors(model)
    qtype = gguf.GGMLQuantizationType[outtype.upper()]
    reader = gguf.GGUFReader(result.path)
    types = {}
    for tensor in reader.tensors:
        types[tensor.name] = tensor.tensor_type
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(
            weights[tensor.name].shape)
        if tensor.tensor_type == qtype:
            assert within_one_step(stored, weights[tensor.name], outtype), tensor.name
        else:  # F32 norms, or the F16 fallback
            np.testing.assert_allclose(stored, weights[tensor.name], rtol=1e-3, atol=1e-4)
    downs = {f"blk.{i}.ffn_down.weight": "F16" for i in range(model.config.num_hidden_layers)}
    assert result.fallbacks == downs
    assert all(types[name] == gguf.GGMLQuantizationType.F16 for name in downs)
    matrices = [n for n, w in weights.items() if w.ndim == 2 and not n.endswith("_norm.weight")]
    assert {n for n in matrices if types[n] == qtype} == set(matrices) - set(downs)
    file_type = reader.get_field("general.file_type").contents()
    assert file_type == gguf.LlamaFileType[f"MOSTLY_{outtype.upper()}"].value


def test_a_k_quant_without_llama_cpp_exits_2_naming_how_to_get_one(tmp_path, text_file,
                                                                   monkeypatch):
    monkeypatch.delenv("PRUNECTL_LLAMA_CPP", raising=False)
    monkeypatch.setenv("PRUNECTL_LLAMA_CPP_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    directory = tmp_path / "tiny"
    tiny_model("llama", vocab_size=VOCAB).save_pretrained(directory)
    bpe_tokenizer().save_pretrained(directory)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(directory), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16, "seed": 1},
        "method": {"name": "manual", "remove": ["layers.1.mlp"]},
    }))
    project = tmp_path / "project"
    runner = CliRunner()
    for step in ("search", "apply"):
        assert runner.invoke(app, [step, "-p", str(project), "-r", str(recipe), "--quiet"]
                             ).exit_code == 0
    result = runner.invoke(app, ["export", "-p", str(project), "--format", "gguf",
                                 "--outtype", "q4_k_m", "--quiet"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "llama-quantize" in result.output and "scripts/llama_cpp.sh" in result.output
    assert not (project / "export").exists()
    result = runner.invoke(app, ["export", "-p", str(project), "--format", "gguf",
                                 "--outtype", "q4_k_m", "--llama-cpp", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "holds no executable llama-quantize" in result.output


LLAMA_CPP = os.environ.get("PRUNECTL_LLAMA_CPP")


@pytest.mark.skipif(not LLAMA_CPP, reason="set PRUNECTL_LLAMA_CPP to llama-quantize, a libllama "
                    "(scripts/llama_cpp.sh, or node-llama-cpp's bins folder) or their folder")
def test_k_quants_through_llama_cpp(tmp_path):
    model = tiny_model("llama", seed=3, vocab_size=VOCAB, hidden_size=256, intermediate_size=320,
                       num_attention_heads=4, num_key_value_heads=2)
    result = write_gguf(model, bpe_tokenizer(), tmp_path / "m.gguf", "q4_k_m")
    weights = expected_tensors(model)
    types = {}
    for tensor in gguf.GGUFReader(result.path).tensors:
        types[tensor.name] = tensor.tensor_type.name
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(
            weights[tensor.name].shape)
        weight = weights[tensor.name]
        # Q4_K at 4.5 bits: the error is a small fraction of the weights' spread
        assert np.sqrt(((stored - weight) ** 2).mean()) <= 0.1 * weight.std() + 1e-6, tensor.name
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    # rows of 320 are no multiple of 256: llama.cpp's fallbacks (Q4_K -> Q5_0, Q6_K -> Q8_0)
    downs = {f"blk.{i}.ffn_down.weight" for i in range(4)}
    assert set(result.fallbacks) == downs
    assert {result.fallbacks[n] for n in downs} <= {"Q5_0", "Q8_0"}
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unknown_out_type_is_refused(model, tmp_path):
    with pytest.raises(UserError, match="unknown GGUF out type 'q3_0'.*q4_k_m"):
        write_gguf(model, bpe_tokenizer(), tmp_path / "m.gguf", "q3_0")
    assert not list(Path(tmp_path).iterdir())
