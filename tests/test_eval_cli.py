"""eval, report and compare through the CLI on a tiny model with the local lm-eval task."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import byte_tokenizer, invoke, save_tiny
from fixtures.tiny_task import TASK, TASKS_DIR, direct_accuracy
from matplotlib.image import imread
from transformers import AutoModelForCausalLM


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow  # the whole pipeline, then eval, report and compare on its project
def test_tasks_report_and_compare_through_the_cli(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
                "method": {
                    "name": "manual",
                    "remove": ["layers.0.attn", "layers.1.mlp", "layers.2"],
                },
                "eval": {
                    "perplexity": {"datasets": [str(text_file)], "seqlen": 64, "max_windows": 2},
                    "tasks": [TASK],
                    "task_paths": [str(TASKS_DIR)],
                    "task_batch_size": 2,
                },
                "export": {"dtype": "float32"},
            }
        )
    )
    project = tmp_path / "proj"
    result = invoke("run", "-p", project, "-r", recipe, "--json", "--quiet")
    assert result.exit_code == 0, result.output

    # accuracies re-read from the files and recomputed with each model directly
    dense = json.loads((project / "eval" / "dense" / "tasks" / f"{TASK}.json").read_text())
    pruned = json.loads((project / "eval" / "pruned" / "tasks" / f"{TASK}.json").read_text())
    dense_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pruned_model = AutoModelForCausalLM.from_pretrained(
        project / "export", trust_remote_code=True
    ).eval()
    assert (dense["acc"], dense["acc_norm"]) == pytest.approx(
        direct_accuracy(dense_model, byte_tokenizer())
    )
    assert (pruned["acc"], pruned["acc_norm"]) == pytest.approx(
        direct_accuracy(pruned_model, byte_tokenizer())
    )
    steps = {s["step"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["eval"]["summary"]["pruned"][TASK] == pruned["score"]

    # a task that cannot be loaded: exit 2 naming it, the finished results untouched
    before = (project / "eval" / "pruned" / "tasks" / f"{TASK}.json").read_text()
    result = invoke(
        "eval", "-p", project, "--tasks", f"{TASK},prunectl_tiny_unreachable", "--quiet"
    )
    assert result.exit_code == 2
    assert "'prunectl_tiny_unreachable' could not be loaded" in result.output
    assert (project / "eval" / "pruned" / "tasks" / f"{TASK}.json").read_text() == before

    result = invoke("report", "-p", project)
    assert result.exit_code == 0, result.output
    report = (project / "eval" / "report.md").read_text()
    assert (f"| {TASK} (acc) | {100 * dense['acc']:.2f} | {100 * pruned['acc']:.2f} |") in report
    assert "| 2 | removed | 0 | 0 | removed | 0 |" in report
    assert imread(project / "eval" / "pruned_structure.png").shape[0] > 200

    result = invoke("compare", project, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["method"], row["model"]) == ("manual", "pruned")
    assert row["task_average"] == pytest.approx(pruned["score"])


def test_a_recipe_without_eval_runs_offline_and_measures_nothing(tmp_path, text_file, monkeypatch):
    """No ``eval:`` section: no default WikiText-2 from the hub; the step says how to ask for it."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("this test has no network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "mag-sp"}, "target": {"params_ratio": 0.2}}))
    project = tmp_path / "proj"
    result = invoke("run", "-p", project, "-r", recipe, "--json", "-q")
    assert result.exit_code == 0, result.output
    steps = {s["step"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["eval"]["status"] == "skipped"
    assert "eval.perplexity.datasets=[wikitext2]" in steps["eval"]["summary"]["reason"]
    assert steps["export"]["status"] == "done" and not (project / "eval" / "pruned").exists()
    pinned = yaml.safe_load((project / "recipe.yaml").read_text())
    assert pinned["eval"]["perplexity"]["datasets"] == []
    again = invoke("eval", "-p", project)
    assert again.exit_code == 0 and "eval: skipped" in again.stderr
    # asking for perplexity on a local file measures it
    local = invoke("eval", "-p", project, "-q", "--set",
                   f"eval.perplexity={{datasets: [{text_file}], seqlen: 32, max_windows: 2}}")
    assert local.exit_code == 0, local.output
    assert json.loads((project / "eval" / "pruned" / "perplexity-text.json").read_text())[
        "perplexity"] > 1
