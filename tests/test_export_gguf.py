"""GGUF export without llama.cpp: every key and tensor read back with ``gguf.GGUFReader``, what the
file computes (numpy reference and transformers' own GGUF reader), out types, and the refusals."""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch
from gguf_models import VOCAB, bpe_tokenizer, pruned
from gguf_reference import GgufFile, reference_logits

from prunectl.errors import UserError
from prunectl.formats.gguf.writer import write_gguf

IDS = [5, 70, 100, 30, 261, 7, 9, 260]
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",  # Phi-3's fused projections
}
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    index, module, kind = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name).groups()
    return f"blk.{index}.{LAYER_NAMES[module]}.{kind}"


def half_split_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's pair order: per head, even rows first, then odd rows (HF's order)."""
    per_head = rows.reshape(n_heads, rows.shape[0] // n_heads, *rows.shape[1:])
    return np.concatenate([per_head[:, 0::2], per_head[:, 1::2]], axis=1).reshape(rows.shape)


def heads_of(model, i: int, proj: str) -> int:
    layer = model.model.layers[i]
    d = model.config.head_dim
    return getattr(layer.self_attn, proj).weight.shape[0] // d


def split_parts(file, hf_name: str) -> list[str] | None:
    """The tensors a fused Phi-3 projection was split into under ``deci``, or None when
    ``hf_name`` is stored as one tensor."""
    name = gguf_name(hf_name)
    if file.arch != "deci" or not re.search(r"qkv_proj|gate_up_proj", hf_name):
        return None
    if ".attn_qkv." in name:
        return [name.replace("attn_qkv", part) for part in ("attn_q", "attn_k", "attn_v")]
    return [name.replace("ffn_up", "ffn_gate"), name]


def stored_in_hf_order(file, model, hf_name: str, permuted: bool) -> np.ndarray:
    """The file's rows for ``name`` in Hugging Face's order: llama.cpp's RoPE pairs undone, and a
    Phi-3 projection that ``deci`` holds split put back together (q, k, v; gate, up)."""
    parts = split_parts(file, hf_name) or [gguf_name(hf_name)]
    rows = []
    for part in parts:
        array = file.array(part)
        assert array is not None, f"{part} missing"
        if permuted and re.search(r"attn_[qk]\.", part):
            n_heads = array.shape[0] // model.config.head_dim
            array = half_split_rows(array, n_heads)
        rows.append(array)
    return np.concatenate(rows) if len(rows) > 1 else rows[0]


def write(model, tmp_path, outtype="f32", name="model.gguf"):
    return write_gguf(model, bpe_tokenizer(), tmp_path / name, outtype)


CASES = [("llama", "uniform", False, "llama"), ("mistral", "uniform", False, "llama"),
         ("qwen2", "mlp_only", False, "qwen2"), ("qwen3", "uniform", False, "qwen3"),
         # llama.cpp's qwen2 loader wants heads x head size = hidden: fewer heads go to deci
         ("qwen2", "uniform", False, "deci"),
         ("llama", "blocks", False, "deci"), ("llama", "widths", True, "deci"),
         ("qwen2", "widths", True, "deci"), ("mistral", "blocks", False, "deci"),
         # Phi-3: its own fused layout when heads x head size = hidden, else deci with q/k/v and
         # gate/up split (llama.cpp's phi3 loader also wants the full attention width)
         ("phi3", "mlp_only", False, "phi3"), ("phi3", "uniform", False, "deci"),
         ("phi3", "blocks", False, "deci"), ("phi3", "widths", True, "deci")]


@pytest.mark.parametrize("family,plan,biases,arch", CASES)
def test_every_tensor_reads_back_equal_to_the_pruned_model(tmp_path, family, plan, biases, arch):
    model = pruned(family, plan, biases=biases)
    result = write(model, tmp_path)
    file = GgufFile(result.path)
    assert result.arch == file.arch == arch
    permuted = arch in ("llama", "deci")
    seen = set()
    for hf_name, tensor in model.state_dict().items():
        name = gguf_name(hf_name)
        expected = tensor.numpy()
        stored = stored_in_hf_order(file, model, hf_name, permuted)
        np.testing.assert_array_equal(stored.reshape(expected.shape), expected, err_msg=name)
        seen.update(split_parts(file, hf_name) or [name])
    extra = set(file.tensors) - seen
    # the only tensors the model does not hold are deci's all-zero stand-ins (see gguf_layout)
    for name in extra:
        assert arch == "deci" and re.fullmatch(r"blk\.\d+\.(attn|ffn)_\w+\.weight", name), name
        values = file.array(name)
        assert (values == 1).all() if name.endswith("_norm.weight") else (values == 0).all(), name
    assert len(file.tensors) == result.tensors


@pytest.mark.parametrize("family,plan,biases,arch", CASES)
def test_the_file_computes_the_pruned_models_logits(tmp_path, family, plan, biases, arch):
    model = pruned(family, plan, biases=biases)
    path = write(model, tmp_path).path
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0].double().numpy()
    np.testing.assert_allclose(reference_logits(path, IDS), expected, atol=1e-4, rtol=0)


def test_transformers_reads_a_uniform_llama_file_to_the_same_logits(tmp_path):
    """transformers' GGUF reader is a second, independent one; for qwen2/qwen3 it ignores
    ``key_length`` (head size = hidden / heads), so pruned heads only check out for llama."""
    from transformers import AutoModelForCausalLM

    model = pruned("llama", "uniform")
    write(model, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", dtype=torch.float32)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_keys_per_layer_arrays_and_tokenizer(tmp_path):
    model = pruned("llama", "widths", biases=True)
    file = GgufFile(write(model, tmp_path).path)
    layers = model.model.layers
    config = model.config
    heads = [heads_of(model, i, "q_proj") if hasattr(layers[i], "self_attn") else 0 for i in range(4)]
    kv = [heads_of(model, i, "k_proj") if hasattr(layers[i], "self_attn") else 0 for i in range(4)]
    ffn = [layers[i].mlp.down_proj.in_features if hasattr(layers[i], "mlp") else 0 for i in range(4)]
    assert file.key("deci.block_count") == len(layers) == 4
    assert file.key("deci.attention.head_count") == heads
    assert file.key("deci.attention.head_count_kv") == kv
    # layer 3 lost its MLP but keeps attention: written as a width-1 all-zero MLP (see gguf_layout)
    assert ffn[3] == 0 and file.key("deci.feed_forward_length") == ffn[:3] + [1]
    assert file.key("deci.embedding_length") == config.hidden_size
    assert file.key("deci.context_length") == config.max_position_embeddings
    assert file.key("deci.attention.key_length") == file.key("deci.attention.value_length") == config.head_dim
    assert file.key("deci.rope.dimension_count") == config.head_dim
    assert file.key("deci.rope.freq_base") == config.rope_parameters["rope_theta"]
    assert file.key("deci.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)
    assert file.key("deci.vocab_size") == VOCAB
    assert file.key("general.file_type") == gguf.LlamaFileType.ALL_F32
    tokenizer = bpe_tokenizer()
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    assert file.key("tokenizer.ggml.tokens") == [by_id.get(i, f"[PAD{i}]") for i in range(VOCAB)]
    assert file.key("tokenizer.ggml.merges") == ["t h", "th e"]
    assert file.key("tokenizer.ggml.model") == "gpt2"
    types = file.key("tokenizer.ggml.token_type")
    assert types[:4] == [gguf.TokenType.CONTROL] * 4 and types[-1] == gguf.TokenType.UNUSED
    assert file.key("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert file.key("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    # FLAP's compensation: deci loads output-projection biases (attn_output.bias, ffn_down.bias)
    np.testing.assert_array_equal(file.array("blk.0.attn_output.bias"), layers[0].self_attn.o_proj.bias.detach().numpy())
    np.testing.assert_array_equal(file.array("blk.0.ffn_down.bias"), layers[0].mlp.down_proj.bias.detach().numpy())


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    model = pruned("llama", "blocks", tie_word_embeddings=True)
    path = write(model, tmp_path).path
    assert "output.weight" not in GgufFile(path).tensors
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0].double().numpy()
    np.testing.assert_allclose(reference_logits(path, IDS), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("outtype,qtype", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_out_types_follow_the_converter(tmp_path, outtype, qtype):
    model = pruned("llama", "widths")
    file = GgufFile(write(model, tmp_path, outtype).path)
    types = {name: t.tensor_type.name for name, t in file.tensors.items()}
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms and biases stay F32
    assert types["blk.2.ffn_gate.weight"] == qtype  # 64 wide rows
    # q8_0 blocks are 32 wide: a 40-wide down projection falls back to F16, as in the converter
    assert types["blk.1.ffn_down.weight"] == ("F16" if outtype == "q8_0" else qtype)
    down = model.model.layers[2].mlp.down_proj.weight.detach().numpy()
    tolerance = {"f16": 2e-3, "bf16": 3e-2, "q8_0": 3e-2}[outtype] * np.abs(down).max()
    np.testing.assert_allclose(file.array("blk.2.ffn_down.weight"), down, atol=tolerance, rtol=0)
    assert file.key("general.file_type") == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = pruned("llama", "blocks", rope_parameters=rope)
    path = write(model, tmp_path).path
    factors = GgufFile(path).array("rope_freqs.weight")
    assert factors.shape == (model.config.head_dim // 2,) and factors.max() == pytest.approx(8.0)
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0].double().numpy()
    np.testing.assert_allclose(reference_logits(path, IDS), expected, atol=1e-4, rtol=0)


PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                 "long_factor": [2.0] * 8, "original_max_position_embeddings": 256}


def test_phi3_keys_follow_the_converter(tmp_path):
    model = pruned("phi3", "mlp_only", sliding_window=16)
    path = write(model, tmp_path).path
    file = GgufFile(path)
    config = model.config
    layer = model.model.layers[0]
    assert file.key("phi3.block_count") == 4
    assert file.key("phi3.attention.head_count") == config.num_attention_heads
    assert file.key("phi3.attention.head_count_kv") == config.num_key_value_heads
    assert file.key("phi3.feed_forward_length") == layer.mlp.down_proj.in_features == 64
    assert file.key("phi3.rope.dimension_count") == config.head_dim
    assert file.key("phi3.context_length") == config.max_position_embeddings
    assert file.key("phi3.rope.scaling.original_context_length") == config.original_max_position_embeddings
    assert file.key("phi3.attention.sliding_window") == 16
    # fused as llama.cpp's phi3 loader wants them: [q; k; v] rows, [gate; up] rows, nothing split
    assert file.array("blk.0.attn_qkv.weight").shape == ((4 + 2 * 2) * config.head_dim, config.hidden_size)
    assert file.array("blk.0.ffn_up.weight").shape == (2 * 64, config.hidden_size)
    assert not {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"} & set(file.tensors)
    # the window is dropped, as llama.cpp's phi3 loader drops it: equal up to the window length
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0].double().numpy()
    np.testing.assert_allclose(reference_logits(path, IDS), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("make,message", [
    (lambda: pruned("qwen3", "blocks"), "no per-head q/k norms"),
    (lambda: pruned("phi3", "mlp_only", rope_parameters=PHI3_LONGROPE), "phi3 supports RoPE types default, not 'longrope'"),
    (lambda: pruned("phi3", "blocks", rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                      "partial_rotary_factor": 0.5}),
     "phi3 does not write a partial rotary factor"),
    (lambda: pruned("llama", "uniform", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0,
                                                        "original_max_position_embeddings": 64}),
     "RoPE types default, llama3, not 'yarn'"),
    (lambda: pruned("qwen2", "uniform", use_sliding_window=True, sliding_window=16, max_window_layers=0),
     "sliding-window attention"),
])
def test_what_llama_cpp_cannot_run_is_refused_before_writing(tmp_path, make, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        write(make(), tmp_path)
    assert "--format hf" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_llama_cpp_cannot_read_is_refused_before_writing(tmp_path, tokenizer):
    with pytest.raises(UserError, match="WordLevel.*not a BPE tokenizer"):
        write_gguf(pruned("llama", "uniform"), tokenizer, tmp_path / "model.gguf", "f32")
    assert list(tmp_path.iterdir()) == []
