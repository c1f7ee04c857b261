"""``eval.llama_cpp``: each model exported as GGUF and measured in llama.cpp (node-llama-cpp's
prebuilt engine): perplexity from the same token ids as transformers, speed, bytes, the report's
table and plot.  Opt-in where no engine is installed; the refusal without one is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import tiny_model
from gguf_models import VOCAB, bpe_tokenizer
from typer.testing import CliRunner

from prunectl.cli import app

runner = CliRunner()
ENGINE = os.environ.get("PRUNECTL_NODE_LLAMA_CPP")


def project_recipe(tmp_path: Path, text: Path, outtypes: list[str]) -> Path:
    directory = tmp_path / "tiny"
    tiny_model("llama", seed=4, vocab_size=VOCAB).save_pretrained(directory)
    bpe_tokenizer().save_pretrained(directory)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(directory), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 2, "seqlen": 16, "seed": 1},
        "method": {"name": "manual", "remove": ["layers.1.mlp", "layers.2"]},
        "eval": {"perplexity": {"datasets": [str(text)], "seqlen": 32, "max_windows": 3},
                 "models": ["dense", "pruned"],
                 "llama_cpp": {"outtypes": outtypes, "prompt": 16, "gen": 4, "repeats": 2}},
    }))
    return path


def test_without_an_engine_eval_exits_2_naming_how_to_install_one(tmp_path, text_file,
                                                                 monkeypatch):
    monkeypatch.delenv("PRUNECTL_NODE_LLAMA_CPP", raising=False)
    project = tmp_path / "p"
    recipe = project_recipe(tmp_path, text_file, ["f16"])
    for step in ("search", "apply"):
        assert runner.invoke(app, [step, "-p", str(project), "-r", str(recipe), "--quiet"]
                             ).exit_code == 0
    result = runner.invoke(app, ["eval", "-p", str(project), "--quiet"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "npm install node-llama-cpp" in result.output
    assert "PRUNECTL_NODE_LLAMA_CPP" in result.output


@pytest.mark.skipif(not ENGINE, reason="set PRUNECTL_NODE_LLAMA_CPP to a folder where "
                    "`NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install node-llama-cpp "
                    "@node-llama-cpp/linux-x64` ran")
def test_perplexity_and_speed_in_llama_cpp_match_transformers(tmp_path, text_file):
    project = tmp_path / "p"
    result = runner.invoke(app, ["run", "-p", str(project), "-r",
                                 str(project_recipe(tmp_path, text_file, ["f32", "q8_0"])),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    for role in ("dense", "pruned"):
        (hf,) = (project / "eval" / role).glob("perplexity-*.json")
        reference = json.loads(hf.read_text())
        for outtype, tolerance in (("f32", 1e-4), ("q8_0", 0.02)):
            entry = json.loads((project / "eval" / role / f"llama-cpp-{outtype}.json").read_text())
            (ppl,) = entry["perplexity"].values()
            assert ppl["tokens_scored"] == reference["tokens_scored"]
            assert abs(ppl["perplexity"] / reference["perplexity"] - 1) < tolerance, (ppl, role)
            path = Path(entry["file"])
            assert path.name == f"tiny-{role}-{outtype}.gguf"
            assert entry["bytes"] == path.stat().st_size
            speed = entry["speed"]
            assert speed["repeats"] == 2 and speed["decode_tok_s_cpu"]["median"] > 0
            assert (role == "pruned") == ("vs_dense" in entry)
    pruned = json.loads((project / "eval" / "pruned" / "llama-cpp-f32.json").read_text())
    dense = json.loads((project / "eval" / "dense" / "llama-cpp-f32.json").read_text())
    assert pruned["bytes"] < dense["bytes"]
    ratio = pruned["vs_dense"]["prompt_tok_s_cpu"]
    assert ratio["q1"] <= ratio["median"] <= ratio["q3"]
    report = (project / "eval" / "report.md").read_text()
    assert "## In llama.cpp (GGUF)" in report and "perplexity_per_byte.png" in report
    assert (project / "eval" / "perplexity_per_byte.png").stat().st_size > 0
