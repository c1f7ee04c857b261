"""The whole pipeline through the CLI on tiny random models: run, skip, stale, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import invoke, manual_recipe, save_tiny
from transformers import AutoModelForCausalLM


def bypassed_logits(model_dir: Path, removed: dict[int, set[str]], ids: torch.Tensor):
    """The dense model with residual blocks bypassed, by plain hooks that zero their output."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for index, kinds in removed.items():
        layer = model.model.layers[index]
        if "attn" in kinds:
            layer.self_attn.register_forward_hook(
                lambda m, a, out: (torch.zeros_like(out[0]), *out[1:])
            )
        if "mlp" in kinds:
            layer.mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_run_manual_end_to_end_and_reload(tmp_path, text_file, family):
    model_dir = save_tiny(tmp_path / family, family)
    recipe = manual_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    project = tmp_path / "proj"

    result = invoke("run", "-p", project, "-r", recipe, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    steps = {s["step"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["recover"]["status"] == "skipped"
    assert steps["export"]["status"] == "done"

    ids = torch.randint(4, 260, (2, 24))
    expected = bypassed_logits(model_dir, {0: {"attn"}, 1: {"mlp"}, 2: {"attn", "mlp"}}, ids)
    exported = AutoModelForCausalLM.from_pretrained(project / "export", trust_remote_code=True)
    with torch.no_grad():
        got = exported.eval()(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(exported.model.layers) == 3  # layer 2 held neither block: dropped

    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    dense = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    assert info["dense"]["total"] == dense
    assert info["pruned"]["total"] == sum(p.numel() for p in exported.parameters())
    card = (project / "export" / "README.md").read_text()
    assert f"{info['pruned']['total']:,}" in card

    ppl_file = project / "eval" / "pruned" / f"perplexity-{text_file.stem}.json"
    assert json.loads(ppl_file.read_text())["perplexity"] > 1


def test_second_run_skips_everything_and_status_reports(tmp_path, tiny_model_dir, text_file):
    recipe = manual_recipe(tmp_path / "recipe.yaml", tiny_model_dir, text_file)
    project = tmp_path / "proj"
    assert invoke("run", "-p", project, "-r", recipe, "--quiet").exit_code == 0
    plan_mtime = (project / "search" / "plan.json").stat().st_mtime_ns

    again = invoke("run", "-p", project, "--json", "--quiet")
    assert again.exit_code == 0, again.output
    statuses = {s["step"]: s["status"] for s in json.loads(again.stdout)["steps"]}
    assert statuses == {
        "calibrate": "up-to-date", "score": "up-to-date", "search": "up-to-date",
        "apply": "up-to-date", "recover": "skipped", "eval": "up-to-date", "export": "up-to-date",
    }
    assert (project / "search" / "plan.json").stat().st_mtime_ns == plan_mtime

    rows = json.loads(invoke("status", "-p", project, "--json").stdout)
    assert [r["step"] for r in rows][:4] == ["calibrate", "score", "search", "apply"]
    assert not any(r.get("stale") for r in rows)


def test_changed_recipe_marks_later_steps_stale_and_reruns_them(tmp_path, tiny_model_dir, text_file):
    recipe = manual_recipe(tmp_path / "recipe.yaml", tiny_model_dir, text_file)
    project = tmp_path / "proj"
    assert invoke("run", "-p", project, "-r", recipe, "--quiet").exit_code == 0

    changed = invoke("score", "-p", project, "--set", "method.remove=[layers.3.mlp]", "--quiet")
    assert changed.exit_code == 0, changed.output
    rows = {r["step"]: r for r in json.loads(invoke("status", "-p", project, "--json").stdout)}
    assert rows["search"]["stale"] and rows["apply"]["stale"]
    assert not rows["calibrate"]["stale"]

    rerun = invoke("run", "-p", project, "--json", "--quiet")
    statuses = {s["step"]: s["status"] for s in json.loads(rerun.stdout)["steps"]}
    assert statuses["calibrate"] == "up-to-date" and statuses["search"] == "done"
    plan = json.loads((project / "search" / "plan.json").read_text())
    assert plan["removal_order"] == ["layers.3.mlp"]
    assert yaml.safe_load((project / "recipe.yaml").read_text())["method"]["remove"] == [
        "layers.3.mlp"
    ]


def test_apply_blocks_takes_a_prefix_of_the_order(tmp_path, tiny_model_dir, text_file):
    recipe = manual_recipe(tmp_path / "recipe.yaml", tiny_model_dir, text_file)
    project = tmp_path / "proj"
    assert invoke("search", "-p", project, "-r", recipe, "--quiet").exit_code == 0
    result = invoke("apply", "-p", project, "--blocks", "1", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert [(row["attention"], row["mlp"]) for row in info["per_layer"]] == [
        (False, True), (True, True), (True, True), (True, True)
    ]
    too_many = invoke("apply", "-p", project, "--blocks", "9", "--quiet")
    assert too_many.exit_code == 2
    assert "exceeds the 3 removals searched" in too_many.stderr


def test_each_step_in_its_own_invocation_reads_the_saved_pruned_model(
    tmp_path, tiny_model_dir, text_file
):
    """A fresh process finds the non-uniform pruned model and its tokenizer on disk."""
    recipe = manual_recipe(tmp_path / "recipe.yaml", tiny_model_dir, text_file)
    project = tmp_path / "proj"
    for step in ("calibrate", "score", "search", "apply", "eval", "export"):
        args = ["-r", recipe] if step == "calibrate" else []
        result = invoke(step, "-p", project, *args, "--quiet")
        assert result.exit_code == 0, (step, result.output)
    pruned = json.loads((project / "eval" / "pruned" / f"perplexity-{text_file.stem}.json").read_text())
    dense = json.loads((project / "eval" / "dense" / f"perplexity-{text_file.stem}.json").read_text())
    assert pruned["model_fingerprint"] != dense["model_fingerprint"]
    assert (project / "export" / "tokenizer.json").exists()
