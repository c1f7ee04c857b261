"""``method: puzzle`` through the CLI on a tiny model: library, solve, verification, apply and
export; ``search --sweep`` and ``apply --budget``; bad values refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import invoke, save_tiny, write_recipe
from transformers import AutoModelForCausalLM

from prunectl.evaluation.perplexity import perplexity
from prunectl.io import load_tensors
from prunectl.methods.inputs import Inputs
from prunectl.plan import Plan
from prunectl.methods.registry import create_method, parse_method_config

SECTION = {"name": "puzzle", "verify": 2, "mlp_widths": [0.25, 0.5, 0.75]}
#: the recipe sections of these tests, beside the shared defaults
SECTIONS = {"calibration": {"nsamples": 6, "batch_size": 3}, "method": SECTION,
            "target": {"params_ratio": 0.2, "ratio_of": "non_embedding"},
            "export": {"dtype": "float32"}}


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny(tmp_path / "llama", "llama")


def read_plan(path) -> Plan:
    return Plan.model_validate(json.loads(path.read_text()))


def test_puzzle_through_the_cli(tmp_path, model_dir, text_file):
    project = tmp_path / "proj"
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, **SECTIONS)
    for step in ("calibrate", "score", "search", "apply", "export"):
        extra = ["-r", recipe] if step == "calibrate" else []
        result = invoke(step, "-p", project, "--quiet", "--json", *extra)
        assert result.exit_code == 0, (step, result.output)
    library = load_tensors(project / "scores" / "scores.safetensors")
    assert library["attn.score"].shape == (4, 3) and library["mlp.channels"].shape == (4, 5)
    plan = read_plan(project / "search" / "plan.json")
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert info["pruned"]["total"] == plan.achieved["params_kept"]
    removed = info["dense"]["non_embedding"] - info["pruned"]["non_embedding"]
    assert removed >= round(0.2 * info["dense"]["non_embedding"])
    assert 1 <= len(plan.curve) <= 2
    assert plan.achieved["calibration_ppl"] == min(p["calibration_ppl"] for p in plan.curve)
    # the exported model loads on its own and computes what the plan applied in-process does
    exported = AutoModelForCausalLM.from_pretrained(project / "export",
                                                    trust_remote_code=True).eval()
    tokens = load_tensors(project / "calibration" / "tokens.safetensors")["input_ids"]
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    method = create_method(parse_method_config(SECTION))
    expected = method.apply(Inputs(dense, tokens, batch_size=3), plan, {}).eval()
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, expected(ids).logits)
    # the verified perplexity is the exported model's on the calibration windows
    ppl = perplexity(exported, tokens.reshape(-1), tokens.shape[1], 3)["perplexity"]
    assert ppl == pytest.approx(plan.achieved["calibration_ppl"], rel=1e-4)


def test_sweep_writes_plans_and_pareto_and_apply_takes_a_budget(tmp_path, model_dir, text_file):
    project = tmp_path / "proj"
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file,
                          **{**SECTIONS, "target": {"params_ratio": 0.2}})
    result = invoke("search", "-p", project, "-r", recipe, "--sweep", "0.9,0.75", "--quiet")
    assert result.exit_code == 0, result.output
    dense = None
    for budget in (0.9, 0.75):
        plan = read_plan(project / "search" / "plans" / f"{budget}.json")
        dense = plan.achieved["params_dense"]
        assert plan.achieved["params_kept"] <= dense - round((1 - budget) * dense)
        assert plan.achieved["target_params_ratio"] == pytest.approx(1 - budget)
    assert (project / "search" / "pareto.png").stat().st_size > 1000
    series = json.loads((project / "search" / "pareto.json").read_text())
    assert set(series) == {"puzzle", "blocks", "widths"}
    assert [p["budget"] for p in series["puzzle"]] == [0.9, 0.75]
    for points in series.values():
        for p in points:
            assert p["params"] <= dense - round((1 - p["budget"]) * dense) and p["perplexity"] > 0
    # the references are restricted solves of the same library: the free solve's optimum (its
    # first candidate) scores at most what either reference scores at the same budget
    for i, budget in enumerate((0.9, 0.75)):
        plan = read_plan(project / "search" / "plans" / f"{budget}.json")
        best = min(p["library_score"] for p in plan.curve)
        for label in ("blocks", "widths"):
            assert best <= series[label][i]["library_score"] + 1e-12

    result = invoke("apply", "-p", project, "--budget", "0.75", "--quiet")
    assert result.exit_code == 0, result.output
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert info["pruned"]["total"] == read_plan(
        project / "search" / "plans" / "0.75.json").achieved["params_kept"]

    result = invoke("apply", "-p", project, "--budget", "0.5", "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "search --sweep 0.5" in lines[0], result.stderr


@pytest.mark.parametrize("case", ["sweep 1.5", "kv_cache_ratio 2", "mlp_widths 1.2",
                                  "kv with flap", "sweep with flap"])
def test_bad_values_exit_2_with_one_line(case, tmp_path, model_dir, text_file):
    method, target, extra, expected = SECTION, None, [], ""
    if case == "sweep 1.5":
        extra, expected = ["--sweep", "1.5"], "--sweep 1.5"
    elif case == "kv_cache_ratio 2":
        target, expected = {"kv_cache_ratio": 2}, "target.kv_cache_ratio"
    elif case == "mlp_widths 1.2":
        method, expected = {"name": "puzzle", "mlp_widths": [1.2]}, "method.mlp_widths"
    elif case == "kv with flap":
        method, target = {"name": "flap"}, {"kv_cache_ratio": 0.3}
        expected = "method flap cannot meet target.kv_cache_ratio"
    else:
        method, extra, expected = {"name": "flap"}, ["--sweep", "0.8"], "method flap has no --sweep"
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file,
                          **{**SECTIONS, "method": method, "target": target or SECTIONS["target"]})
    project = tmp_path / "proj"
    result = invoke("search", "-p", project, "-r", recipe, "--quiet", *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], \
        result.stderr
    assert not (project / "calibration" / "tokens.safetensors").exists()  # refused up front


def test_search_only_keys_reuse_the_library(tmp_path, model_dir, text_file):
    """``verify`` and ``diversity`` change the search, not the library: the score step stays
    up to date; ``score_windows`` changes the library and re-scores it."""
    project = tmp_path / "proj"
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, **SECTIONS)
    assert invoke("search", "-p", project, "-r", recipe, "--quiet").exit_code == 0

    def statuses(*sets):
        result = invoke("search", "-p", project, "-r", recipe, "--json",
                        *[a for s in sets for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        return {s["step"]: s["status"] for s in json.loads(result.stdout)["steps"]}

    got = statuses("method.verify=1", "method.diversity=1")
    assert got["score"] == "up-to-date" and got["search"] == "done", got
    assert statuses("method.verify=1", "method.diversity=1", "method.score_windows=2")[
        "score"] == "done"


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize("point", [("scores/progress/progress.jsonl", "after", 5),
                                   ("search/verify.jsonl", "after", 1)],
                         ids=["scoring", "verification"])
def test_a_sigkilled_search_resumes_to_the_uninterrupted_library_and_plan(tmp_path, model_dir,
                                                                          text_file, point):
    """SIGKILL mid-library (after the 5th journaled record) or mid-verification (after the
    first verified candidate), then the same command again: the same library bytes and plan."""
    from killpoints import kill_env, prunectl

    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, **SECTIONS)

    def search(project, env=None):
        return prunectl("search", "-p", project, "-r", recipe, "--quiet", env=env)

    straight = tmp_path / "straight"
    assert search(straight).returncode == 0
    project = tmp_path / "killed"
    pattern, when, nth = point
    killed = search(project, kill_env(tmp_path / "hook", project, pattern, when, nth))
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = search(project)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("scores/scores.safetensors", "search/plan.json"):
        assert (project / name).read_bytes() == (straight / name).read_bytes(), name
