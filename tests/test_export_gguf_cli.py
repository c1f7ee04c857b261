"""``prunectl export --format gguf`` through the CLI: the file and its model card, the tokenizer
taken over from a GGUF source, and the refusals (exit 2, one line, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import invoke, tiny_model
from gguf_models import VOCAB, bpe_tokenizer
from gguf_reference import GgufFile, reference_logits

from prunectl.formats.gguf.writer import write_gguf
from prunectl.modeling.loading import load_project_model
from prunectl.steps.export_gguf import LLAMA_CPP_CHECKED

IDS = [5, 70, 100, 30, 261, 7]


def model_dir(tmp_path: Path, family: str = "llama") -> Path:
    directory = tmp_path / f"tiny-{family}"
    tiny_model(family, vocab_size=VOCAB).save_pretrained(directory)
    bpe_tokenizer().save_pretrained(directory)
    return directory


def recipe(tmp_path: Path, model_path: Path, text: Path, export: dict | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(model_path), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 2, "seqlen": 16, "seed": 1},
        "method": {"name": "manual", "remove": ["layers.0.attn", "layers.1.mlp", "layers.2"]},
        "eval": {"perplexity": {"datasets": [str(text)], "seqlen": 32, "batch_size": 2, "max_windows": 2}},
        **({"export": export} if export else {}),
    }))
    return path


def prune(project: Path, recipe_path: Path) -> None:
    """search (with calibrate and score) and apply: a pruned project with no export yet."""
    assert invoke("search", "-p", project, "-r", recipe_path, "--quiet").exit_code == 0
    assert invoke("apply", "-p", project, "--quiet").exit_code == 0


def error_line(output: str) -> str:
    """The one error line of a refused command (warnings may precede it)."""
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def pruned_logits(project: Path) -> np.ndarray:
    model = load_project_model(project / "pruned", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].double().numpy()


def test_run_with_export_format_gguf_writes_the_file_and_its_card(tmp_path, text_file):
    project = tmp_path / "project"
    result = invoke("run", "-p", project, "-r",
                    recipe(tmp_path, model_dir(tmp_path), text_file, {"format": "gguf", "outtype": "f32"}),
                    "--quiet")
    assert result.exit_code == 0, result.output
    name = "tiny-llama-manual-f32.gguf"
    files = {p.name for p in (project / "export").iterdir()}
    assert {"README.md", name} <= files and not {f for f in files if f.endswith((".json", ".safetensors"))}
    path = project / "export" / name
    assert GgufFile(path).arch == "deci"
    np.testing.assert_allclose(reference_logits(path, IDS), pruned_logits(project), atol=1e-4, rtol=0)
    card = (project / "export" / "README.md").read_text()
    assert f"File: `{name}`" in card and f"llama-cli -m {name}" in card and LLAMA_CPP_CHECKED in card

    again = invoke("export", "-p", project, "--format", "gguf", "--outtype", "q8_0", "--quiet")
    assert again.exit_code == 0, again.output
    quantized = GgufFile(project / "exports" / "gguf-q8_0" / "tiny-llama-manual-q8_0.gguf")
    assert quantized.tensors["blk.1.attn_q.weight"].tensor_type.name == "Q8_0"
    assert path.exists()  # a one-off: the project's own export stays


def test_a_gguf_source_passes_its_tokenizer_keys_through(tmp_path, text_file):
    source = write_gguf(tiny_model("llama", vocab_size=VOCAB), bpe_tokenizer(), tmp_path / "src" / "dense.gguf",
                        "f32").path
    project = tmp_path / "project"
    result = invoke("run", "-p", project, "-r", recipe(tmp_path, source, text_file, {"format": "gguf"}), "--quiet")
    assert result.exit_code == 0, result.output
    written = GgufFile(project / "export" / "dense-manual-f16.gguf")
    original = GgufFile(source)
    keys = [k for k in original.reader.fields if k.startswith("tokenizer.")]
    assert keys and [k for k in written.reader.fields if k.startswith("tokenizer.")] == keys
    for key in keys:
        assert written.key(key) == original.key(key), key


@pytest.mark.parametrize("export,args,message", [
    (None, ["--outtype", "q8_0"], "got outtype=q8_0 with format=hf, expected outtype only with format: gguf"),
    (None, ["--format", "onnx"], "export.format"),
])
def test_option_combinations_are_refused_by_the_recipe(tmp_path, text_file, export, args, message):
    project = tmp_path / "project"
    prune(project, recipe(tmp_path, model_dir(tmp_path), text_file, export))
    result = invoke("export", "-p", project, *args)
    assert result.exit_code == 2
    assert message in error_line(result.output)
    assert not (project / "export").exists() and not (project / "exports").exists()


def test_a_result_llama_cpp_cannot_run_is_refused_without_touching_the_export(tmp_path, text_file):
    project = tmp_path / "project"
    prune(project, recipe(tmp_path, model_dir(tmp_path, "qwen3"), text_file))
    assert invoke("export", "-p", project, "--quiet").exit_code == 0  # the Hugging Face export
    before = sorted(p.name for p in (project / "export").iterdir())
    result = invoke("export", "-p", project, "--format", "gguf")
    assert result.exit_code == 2
    assert "no per-head q/k norms" in error_line(result.output)
    assert sorted(p.name for p in (project / "export").iterdir()) == before
    assert not (project / "exports").exists()


def test_the_model_card_names_the_llama_cpp_that_scripts_llama_cpp_builds():
    script = (Path(__file__).parents[1] / "scripts" / "llama_cpp.sh").read_text()
    (version,) = re.findall(r"^SDIST_VERSION=(\S+)$", script, flags=re.MULTILINE)
    assert LLAMA_CPP_CHECKED.endswith(f"llama-cpp-python {version}")


def phi3_dir(tmp_path: Path, directory_name: str = "tiny-fused", **config) -> Path:
    """A tiny Phi-3 checkpoint; its directory name becomes the GGUF ``general.name``."""
    directory = tmp_path / directory_name
    tiny_model("phi3", vocab_size=VOCAB, **config).save_pretrained(directory)
    bpe_tokenizer().save_pretrained(directory)
    return directory


def test_a_phi3_result_exports_to_deci_with_its_projections_split(tmp_path, text_file):
    project = tmp_path / "project"
    prune(project, recipe(tmp_path, phi3_dir(tmp_path), text_file))
    result = invoke("export", "-p", project, "--format", "gguf", "--outtype", "f32", "--quiet")
    assert result.exit_code == 0, result.output
    (path,) = (project / "exports" / "gguf-f32").glob("*.gguf")
    file = GgufFile(path)
    assert file.arch == "deci" and "blk.1.attn_q.weight" in file.tensors
    np.testing.assert_allclose(reference_logits(path, IDS), pruned_logits(project), atol=1e-4, rtol=0)


def test_phi3_longrope_is_refused_in_one_line_before_writing(tmp_path, text_file):
    rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8, "original_max_position_embeddings": 256}
    project = tmp_path / "project"
    prune(project, recipe(tmp_path, phi3_dir(tmp_path, rope_parameters=rope), text_file))
    result = invoke("export", "-p", project, "--format", "gguf")
    assert result.exit_code == 2
    assert "phi3 supports RoPE types default, not 'longrope'" in error_line(result.output)
    assert not (project / "exports").exists()


def test_a_phi3_name_without_phi3s_special_tokens_is_refused(tmp_path, text_file):
    """llama.cpp reads a ``general.name`` containing 'phi3' as Phi-3 and looks up '<|endoftext|>'
    and friends by text; the tiny byte-level vocabulary has no '<|endoftext|>'."""
    project = tmp_path / "project"
    prune(project, recipe(tmp_path, phi3_dir(tmp_path, "tiny-phi3"), text_file))
    result = invoke("export", "-p", project, "--format", "gguf")
    assert result.exit_code == 2
    line = error_line(result.output)
    assert "named 'tiny-phi3-manual-f16' as Phi-3" in line and "<|endoftext|>" in line and "</s>" not in line
    assert not (project / "exports").exists()
