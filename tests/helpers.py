"""What the tests share, imported as ``from helpers import ...``: tiny random models of every
supported family, a byte-level tokenizer, a small text, one recipe writer and one CLI call.
Everything is built in-process in seconds; nothing is downloaded.  The fixtures that use these
live in ``conftest.py``; a test module never imports from ``conftest``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from prunectl.cli import app

VOCAB = 260  # 256 bytes + 4 specials


FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    # Gemma: head_dim != hidden / heads, query_pre_attn_scalar != head_dim, sliding layers (window
    # 4) between global ones, tied embeddings (a wider init, since the tied head is not scaled
    # up below: logits large enough for Gemma 2's soft-capping of attention and logits to bite)
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "head_dim": 24, "query_pre_attn_scalar": 20, "sliding_window": 4, "pad_token_id": 0,
        "final_logit_softcapping": 6.0, "attn_logit_softcapping": 12.0, "tie_word_embeddings": True,
        "initializer_range": 0.2}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 24, "query_pre_attn_scalar": 20, "sliding_window": 4, "pad_token_id": 0,
        "sliding_window_pattern": 2, "tie_word_embeddings": True, "initializer_range": 0.2}),
}


TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes what a model does not need.\n"
    "Structured pruning removes whole heads, channels or blocks, so the model gets faster.\n"
    "A calibration set is a small sample of text used to measure what matters.\n"
)


def tiny_config(family: str = "llama", **overrides):
    """A few layers, hidden 64, GQA 4/2 heads: small enough for seconds, shaped like the real thing."""
    import transformers

    config_name, _, extra = FAMILY_CONFIGS[family]
    values = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    values.update(extra)
    values.update(overrides)
    return getattr(transformers, config_name)(**values)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    import transformers

    _, model_name, _ = FAMILY_CONFIGS[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(tiny_config(family, **overrides))
    # random init keeps logits nearly flat; scale so pruning decisions differ between blocks
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.mul_(4.0)
    return model.eval()


MOE_CONFIGS = {  # 8 routed experts, top-2; Qwen3-MoE renormalises its top-k gates, Qwen2-MoE not
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"head_dim": 16, "num_experts": 8, "moe_intermediate_size": 32,
                   "norm_topk_prob": True}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 8, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_local_experts": 8, "intermediate_size": 32, "sliding_window": None}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 8, "intermediate_size": 32}),
}


def tiny_moe(family: str = "qwen3_moe", seed: int = 0, **overrides):
    """A tiny mixture-of-experts model (3 layers, 8 experts, top-2), weights scaled like
    ``tiny_model``'s so routing and expert outputs are far from uniform."""
    import transformers

    config_name, model_name, extra = MOE_CONFIGS[family]
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, num_experts_per_tok=2,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0, tie_word_embeddings=False)
    values.update(extra)
    values.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**values))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embed" not in name:
                param.mul_(4.0)
    return model.eval()


def layer_states(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Layer 0's input, then every decoder layer's output, from one plain forward with
    ``output_hidden_states`` (its last entry is after the final norm, so the last layer's output
    is caught by a hook instead)."""
    last = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda m, a, out: last.setdefault("out", out[0] if isinstance(out, tuple) else out))
    with torch.inference_mode():
        states = list(model(ids, output_hidden_states=True).hidden_states)
    hook.remove()
    states[-1] = last["out"]
    return states


def byte_tokenizer():
    """A byte-level fast tokenizer (vocab 260) built offline with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
         pre_tokenizers.Split("", behavior="isolated")]
    )
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )


def save_tiny(directory: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny model with its tokenizer as a local Hugging Face directory."""
    model = tiny_model(family, seed, **overrides)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def write_recipe(path: Path, model: Path, text: Path, **sections) -> Path:
    """Write a recipe for ``model`` calibrated on ``text`` at ``path`` and return ``path``.  The
    defaults are tiny (float32 on the CPU, 4 samples of 32 tokens); each section given replaces
    its default, except ``calibration``, whose keys update the default ones."""
    recipe = {
        "model": {"path": str(model), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 4, "seqlen": 32, "seed": 1,
                        **sections.pop("calibration", {})},
        **sections,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def manual_recipe(path: Path, model_dir: Path, text: Path, **sections) -> Path:
    """The pipeline recipe of these runs (a manual removal, evaluated on ``text``); each section
    given replaces its default (other test modules use it with their own method)."""
    return write_recipe(path, model_dir, text, **{
        "method": {"name": "manual", "remove": ["layers.0.attn", "layers.1.mlp", "layers.2"]},
        "eval": {"perplexity": {"datasets": [str(text)], "seqlen": 64, "batch_size": 2,
                                "max_windows": 4}},
        "export": {"dtype": "float32"},
        **sections})


def invoke(*args):
    """Run ``prunectl`` in-process with ``args`` (paths and numbers as strings) and return the
    Click result (exit code, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result, *fragments: str) -> str:
    """A refusal as prunectl makes it: exit 2 and one ``error:`` line on stderr naming
    ``fragments``; returns the line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree(root: Path, skip: str | None = None, folders: bool = True) -> dict[str, str]:
    """Every file under ``root`` with its sha256 and (``folders``) every folder as "dir", those
    whose relative path starts with ``skip`` left out: what "the project is unchanged" compares."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if (skip is None or not relative.startswith(skip)) and (folders or path.is_file()):
            found[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found

