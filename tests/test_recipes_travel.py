"""Recipes travel: a recipe file's paths resolve against its directory, ``--set`` paths against
the current directory, the project pins them absolute (so every command works from anywhere)
and nothing exported names a path of this machine."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import one_error_line, save_tiny
from typer.testing import CliRunner

from prunectl.cli import app
from prunectl.recipe.load import load_recipe

runner = CliRunner()




def shared_recipe(folder: Path, text_file: Path) -> Path:
    """A recipe in ``folder`` naming its model and data relative to itself, as a team shares it."""
    save_tiny(folder.parent / "models" / "tiny")
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "text.txt").write_text(text_file.read_text())
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": "../models/tiny", "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": "data/text.txt", "nsamples": 4, "seqlen": 32},
        "method": {"name": "manual", "remove": ["layers.1"]},
        "eval": {"perplexity": {"datasets": ["data/text.txt"], "seqlen": 64, "batch_size": 2,
                                "max_windows": 2}},
        "export": {"dtype": "float32"},
    }))
    return recipe


def test_a_project_made_in_one_directory_runs_from_another(tmp_path, text_file, monkeypatch):
    shared_recipe(tmp_path / "a", text_file)
    for name in ("b", "c"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "b")
    result = runner.invoke(app, ["run", "-p", "proj", "-r", "../a/recipe.yaml", "-q"])
    assert result.exit_code == 0, result.output
    project = (tmp_path / "b" / "proj").resolve()
    pinned = yaml.safe_load((project / "recipe.yaml").read_text())
    data = str((tmp_path / "a" / "data" / "text.txt").resolve())
    assert pinned["model"]["path"] == str((tmp_path / "models" / "tiny").resolve())
    assert pinned["calibration"]["dataset"] == data
    assert pinned["eval"]["perplexity"]["datasets"] == [data]

    monkeypatch.chdir(tmp_path / "c")
    for step in ("eval", "export"):
        result = runner.invoke(app, [step, "-p", str(project), "--force", "-q"])
        assert result.exit_code == 0, f"{step}: {result.output}"
    assert yaml.safe_load((project / "recipe.yaml").read_text()) == pinned  # nothing re-pinned
    assert not list((tmp_path / "c").iterdir())  # nothing written where the command ran
    machine = str(tmp_path.resolve())
    for file in (project / "export").rglob("*"):
        if file.is_file() and file.suffix in {".json", ".md", ".yaml", ".txt", ".py"}:
            assert machine not in file.read_text(), file  # no absolute path of this machine


def test_paths_from_set_resolve_against_the_current_directory(tmp_path, text_file, monkeypatch):
    recipe = shared_recipe(tmp_path / "a", text_file)
    (tmp_path / "b" / "more").mkdir(parents=True)
    (tmp_path / "b" / "more" / "x.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "b")
    _, resolved = load_recipe(recipe, ["calibration.dataset=more/x.txt"])
    assert resolved["calibration"]["dataset"] == str((tmp_path / "b" / "more" / "x.txt").resolve())
    assert resolved["model"]["path"] == str((tmp_path / "models" / "tiny").resolve())


def test_hub_ids_stay_and_missing_local_paths_say_where_they_looked(tmp_path, text_file,
                                                                    monkeypatch):
    recipe = shared_recipe(tmp_path / "a", text_file)
    monkeypatch.chdir(tmp_path)
    for hub_id in ("meta-llama/Llama-2-7b-hf", "gpt2"):
        _, resolved = load_recipe(recipe, [f"model.path={hub_id}"])
        assert resolved["model"]["path"] == hub_id
    _, resolved = load_recipe(recipe, ["recover.dataset=yahma/alpaca-cleaned",
                                       "calibration.dataset=wikitext2"])
    assert resolved["recover"]["dataset"] == "yahma/alpaca-cleaned"
    assert resolved["calibration"]["dataset"] == "wikitext2"

    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe), "--set",
                                       "eval.task_paths=[tasks]"]),
                   "eval.task_paths: tasks does not exist",
                   f"looked for {(tmp_path / 'tasks').resolve()}", "the current directory")
    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe), "--set",
                                       "calibration.dataset=mine.jsonl"]),
                   "calibration.dataset: mine.jsonl does not exist")
    recipe.write_text(recipe.read_text().replace("../models/tiny", "../tiny"))
    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe)]),
                   "model.path: ../tiny does not exist",
                   f"looked for {(tmp_path / 'tiny').resolve()}",
                   f"relative to the directory of {recipe}")
