"""The pruned model format: saved directories reload (with plain transformers) to the same logits,
generate with the KV cache right, and are written atomically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, DynamicCache

from helpers import byte_tokenizer, tiny_model
from prunectl.errors import UserError
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling import modeling_prunectl
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.loading import load_project_model
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan

IDS = torch.randint(4, 260, (2, 11), generator=torch.Generator().manual_seed(2))
CPU = torch.device("cpu")

BLOCKS = Plan(method="t", layers={0: LayerPlan(attention=False), 1: LayerPlan(mlp=False),
                                  2: LayerPlan(attention=False, mlp=False)})
WIDTH = Plan(
    method="t",
    hidden_channels=list(range(8, 64)),
    layers={0: LayerPlan(q_heads=[0, 2]), 1: LayerPlan(kv_heads=[0], mlp_channels=list(range(50))),
            3: LayerPlan(mlp=False)},
)


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(ids).logits


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def saved_config(directory) -> dict:
    return json.loads((directory / "config.json").read_text())


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"])
def test_block_removal_reloads_with_remote_code_and_with_prunectl(tmp_path, family):
    pruned = apply_plan(tiny_model(family), BLOCKS)
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "pruned")
    config = saved_config(directory)
    assert config["model_type"] == family
    assert config["per_layer_config"] == {"0": {"skip": ["attention"]}, "1": {"skip": ["mlp"]}}
    assert config["num_hidden_layers"] == 3
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_prunectl.Pruned")
    assert (directory / "modeling_prunectl.py").read_text() == (
        open(modeling_prunectl.__file__).read()
    )
    reloaded = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    assert type(reloaded).__module__ != modeling_prunectl.__name__  # the copy in the directory ran
    close(logits(reloaded), logits(pruned))
    # what a user of a published model does, under whatever transformers is installed (the
    # opt-in scripts/test-latest.sh runs this under the newest one the range allows)
    with torch.inference_mode():
        prompt = IDS[:1, :6]
        assert torch.equal(
            reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True),
            reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False))
    ours = load_project_model(directory, CPU, torch.float32)
    assert type(ours).__module__ == modeling_prunectl.__name__  # no remote code needed
    close(logits(ours), logits(pruned))


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2"])
def test_width_pruning_with_biases_reloads_to_the_same_logits(tmp_path, family):
    biases = {"layers.0.o_proj": torch.randn(64), "layers.1.down_proj": torch.randn(64)}
    pruned = apply_plan(tiny_model(family), WIDTH, biases)
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "pruned")
    config = saved_config(directory)
    keys = ("num_attention_heads", "num_key_value_heads", "intermediate_size",
            "o_proj_bias", "down_proj_bias", "skip")
    per_layer = [  # what each layer resolves to: its override, else the global value
        {key: config["per_layer_config"].get(str(j), {}).get(key, config.get(key, [])) for key in keys}
        for j in range(4)
    ]
    assert per_layer == [
        dict(zip(keys, (2, 2, 96, True, False, []))),
        dict(zip(keys, (2, 1, 50, False, True, []))),
        dict(zip(keys, (4, 2, 96, False, False, []))),
        dict(zip(keys, (4, 2, 96, False, False, ["mlp"]))),
    ]
    reloaded = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    assert reloaded.config.hidden_size == 56
    close(logits(reloaded), logits(pruned))


def test_uniform_result_loads_without_remote_code(tmp_path):
    plan = Plan(method="t", hidden_channels=list(range(48)), layers={
        i: LayerPlan(q_heads=[0, 2], mlp_channels=list(range(64))) for i in range(4)
    })
    pruned = apply_plan(tiny_model("llama"), plan)
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "uniform")
    config = saved_config(directory)
    assert "auto_map" not in config and "per_layer_config" not in config
    assert not (directory / "modeling_prunectl.py").exists()
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["intermediate_size"], config["head_dim"]) == (48, 2, 2, 64, 16)
    reloaded = AutoModelForCausalLM.from_pretrained(directory)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    close(logits(reloaded), logits(pruned))


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gemma3_text"])
def test_generate_with_and_without_cache_when_layer_zero_has_no_attention(family):
    model = apply_plan(tiny_model(family), BLOCKS)
    prompt = IDS[:1, :6]
    with torch.inference_mode():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
        # decoding step by step through the cache gives the logits of one full forward
        cache = DynamicCache(config=model.config)
        first = model(IDS[:, :6], past_key_values=cache, use_cache=True)
        second = model(IDS[:, 6:], past_key_values=first.past_key_values, use_cache=True)
    close(second.logits, logits(model)[:, 6:])
    assert first.past_key_values.get_seq_length() == 11
    # slots for the attention layers alone (1 and 3): slot 0 is layer 1's, with every position
    assert len(cache.layers) == 2 and all(s.get_seq_length() == 11 for s in cache.layers)


def test_tied_embeddings_stay_tied_and_are_saved_once(tmp_path):
    pruned = apply_plan(tiny_model("llama", tie_word_embeddings=True), WIDTH)
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "tied")
    with safe_open(directory / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        saved = sum(f.get_tensor(k).numel() for k in f.keys())
    assert count_parameters(pruned)["total"] == saved  # tied embeddings counted once
    reloaded = load_project_model(directory, CPU, torch.float32)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    close(logits(reloaded), logits(pruned))


def test_save_in_another_dtype_leaves_the_model_alone(tmp_path):
    pruned = apply_plan(tiny_model("qwen2", tie_word_embeddings=True), BLOCKS)
    directory = save_model(pruned, byte_tokenizer(), tmp_path / "bf16", dtype=torch.bfloat16)
    assert pruned.dtype == torch.float32
    with safe_open(directory / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert "lm_head.weight" not in f.keys()
    assert saved_config(directory)["dtype"] == "bfloat16"
    reloaded = load_project_model(directory, CPU, torch.bfloat16)
    assert reloaded.model.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert (directory / "generation_config.json").exists()
    assert (directory / "tokenizer.json").exists()


class BrokenTokenizer:
    def save_pretrained(self, directory):
        raise RuntimeError("disk full")


def test_save_replaces_a_directory_whole_or_not_at_all(tmp_path):
    target = tmp_path / "pruned"
    save_model(apply_plan(tiny_model("llama"), BLOCKS), byte_tokenizer(), target)
    (target / "stale.txt").write_text("from an older save")
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tiny_model("llama", seed=9), BrokenTokenizer(), target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporary left over
    save_model(tiny_model("llama", seed=9), byte_tokenizer(), target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    close(logits(load_project_model(target, CPU, torch.float32)), logits(tiny_model("llama", seed=9)))


def test_load_project_model_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="holds no model \\(config.json missing\\)"):
        load_project_model(tmp_path, CPU, torch.float32)


def test_a_pruned_model_can_be_pruned_again(tmp_path):
    """Plans index the model they are applied to: re-pruning a pruned model (e.g. after recovery)
    removes the same heads as zeroing their columns in it."""
    once = apply_plan(tiny_model("qwen2"), BLOCKS)
    reference = load_project_model(save_model(once, None, tmp_path / "once"), CPU, torch.float32)
    with torch.no_grad():
        reference.model.layers[1].self_attn.o_proj.weight[:, 16:32] = 0  # head 1
        reference.model.layers[1].self_attn.o_proj.weight[:, 48:64] = 0  # head 3
    again = apply_plan(load_project_model(tmp_path / "once", CPU, torch.float32),
                       Plan(method="t", layers={1: LayerPlan(q_heads=[0, 2])}))
    assert again.model.layers[1].self_attn.o_proj.in_features == 32
    assert not hasattr(again.model.layers[0], "self_attn")  # what the first surgery removed stays gone
    close(logits(again), logits(reference))


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma2", "gemma3_text"])
def test_pruned_class_with_nothing_removed_equals_the_stock_model(family):
    """The shipped modeling code itself, apart from any removal: same logits and hidden states."""
    from prunectl.modeling.loading import rebuild_model

    dense = tiny_model(family)
    cls = modeling_prunectl.pruned_class_for(family)
    config = cls.config_class.from_dict(
        {**dense.config.to_dict(), "head_dim": Adapter(dense).head_dim, "per_layer_config": {}})
    with torch.inference_mode():
        expected = dense(IDS, output_hidden_states=True)
    ours = rebuild_model(cls, config, dict(dense.state_dict()), dense)
    with torch.inference_mode():
        got = ours(IDS, output_hidden_states=True)
    close(got.logits, expected.logits)
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for a, b in zip(got.hidden_states, expected.hidden_states):
        close(a, b)


@pytest.mark.parametrize(
    ("family", "window"),
    [("qwen2", {"use_sliding_window": True, "max_window_layers": 2, "sliding_window": 4}),
     ("mistral", {"sliding_window": 4}), ("gemma2", {}), ("gemma3_text", {})],
)
def test_sliding_window_layers_keep_their_masks_and_caches(family, window):
    """Removing a block equals zeroing its output projection (no bias here), so the stock dense
    model, with its own sliding-window masks, is the reference; decoding token by token through
    the cache must then give the same logits."""
    plan = Plan(method="t", layers={0: LayerPlan(attention=False),
                                    1: LayerPlan(attention=False, mlp=False),
                                    3: LayerPlan(q_heads=[0, 2])})
    dense = tiny_model(family, **window)
    with torch.no_grad():
        dense.model.layers[0].self_attn.o_proj.weight.zero_()
        dense.model.layers[1].self_attn.o_proj.weight.zero_()
        dense.model.layers[1].mlp.down_proj.weight.zero_()
        hd = Adapter(dense).head_dim
        dense.model.layers[3].self_attn.o_proj.weight[:, hd:2 * hd] = 0  # heads 1 and 3
        dense.model.layers[3].self_attn.o_proj.weight[:, 3 * hd:4 * hd] = 0
    pruned = apply_plan(tiny_model(family, **window), plan)
    full = logits(pruned)
    close(full, logits(dense))
    if family == "qwen2":
        assert pruned.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    if family.startswith("gemma"):  # sliding, full, sliding, full: layer 1 goes
        assert pruned.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    with torch.inference_mode():
        out = pruned(IDS[:, :3], use_cache=True)
        for t in range(3, IDS.shape[1]):
            out = pruned(IDS[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            close(out.logits[:, -1], full[:, t])
