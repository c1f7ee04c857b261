"""The reconstruction keys and ``method: slimgpt`` through the CLI: calibrate -> score -> search
-> apply -> export on tiny models, the exported model checked against the method's own ``apply``
run in-process on the project's calibration tokens; bad values exit 2 with one line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import invoke, save_tiny, write_recipe
from transformers import AutoModelForCausalLM

from prunectl.io import load_tensors
from prunectl.methods.inputs import Inputs
from prunectl.plan import Plan
from prunectl.methods.registry import create_method, parse_method_config

STEPS = ("calibrate", "score", "search", "apply", "export")


def recipe_file(tmp_path, model_dir, text_file, method):
    return write_recipe(tmp_path / "recipe.yaml", model_dir, text_file,
                        calibration={"nsamples": 8, "batch_size": 4}, method=method,
                        target={"params_ratio": 0.25}, export={"dtype": "float32"})


def step(name, project, recipe=None):
    """One step, quiet and in JSON, reading ``recipe`` where given."""
    return invoke(name, "-p", project, "--quiet", "--json", *(["-r", recipe] if recipe else []))


def in_process(model_dir, section, project):
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    method = create_method(parse_method_config(section))
    stats_file = project / "calibration" / "stats.safetensors"
    stats = load_tensors(stats_file) if stats_file.exists() else {}
    tokens = load_tensors(project / "calibration" / "tokens.safetensors")["input_ids"]
    plan = Plan.model_validate(json.loads((project / "search" / "plan.json").read_text()))
    inputs = Inputs(dense, tokens if method.apply_uses_tokens else Inputs(dense).tokens,
                    batch_size=4)
    return method.apply(inputs, plan, stats).eval(), plan


SECTIONS = {
    "flap-ls-dense": {"name": "flap", "reconstruct": "least_squares"},
    "wanda-sp-ls-self": {"name": "wanda-sp", "reconstruct": "least_squares",
                         "reconstruct_target": "self", "reconstruct_damp": 0.05},
    "mag-sp-ls": {"name": "mag-sp", "reconstruct": "least_squares"},
    "taylor-bias": {"name": "taylor", "reconstruct": "bias", "layer_start": 0},
    "taylor-ls": {"name": "taylor", "reconstruct": "least_squares", "layer_start": 0},
    "magnitude-ls": {"name": "magnitude", "reconstruct": "least_squares",
                     "prune_hidden": False},
    "slimgpt": {"name": "slimgpt"},
    "slimgpt-uniform-dense": {"name": "slimgpt", "allocation": "uniform",
                              "reconstruct_target": "dense", "ipr_first": 0.5},
    "slimgpt-alam-bias": {"name": "slimgpt", "allocation": "AL-AM", "reconstruct": "bias"},
}


@pytest.mark.parametrize("case", sorted(SECTIONS))
def test_reconstruction_keys_through_the_cli(tmp_path, text_file, case):
    section = SECTIONS[case]
    model_dir = save_tiny(tmp_path / "llama", "llama", num_attention_heads=8,
                          num_key_value_heads=4)
    project = tmp_path / "proj"
    recipe = recipe_file(tmp_path, model_dir, text_file, section)
    for name in STEPS:
        result = step(name, project, recipe if name == "calibrate" else None)
        assert result.exit_code == 0, (name, result.output)
    expected, plan = in_process(model_dir, section, project)
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert info["dense"]["total"] - info["pruned"]["total"] > 0.15 * info["dense"]["total"]
    if "params_removed" in plan.achieved:
        assert info["dense"]["total"] - info["pruned"]["total"] == plan.achieved["params_removed"]
    exported = AutoModelForCausalLM.from_pretrained(project / "export", trust_remote_code=True)
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(ids).logits, expected(ids).logits)
    if section.get("reconstruct", "least_squares") != "none":  # a fitted bias on a pruned layer
        i = next(iter(plan.layers))
        layer = exported.model.layers[i]
        assert layer.self_attn.o_proj.bias is not None or layer.mlp.down_proj.bias is not None


BAD = {
    "reconstruct": ({"name": "flap", "reconstruct": "ols"}, ["method.reconstruct"]),
    "target": ({"name": "wanda-sp", "reconstruct_target": "teacher"},
               ["method.reconstruct_target"]),
    "damp": ({"name": "taylor", "reconstruct_damp": -1}, ["method.reconstruct_damp"]),
    "allocation": ({"name": "slimgpt", "allocation": "cubic"}, ["method.allocation"]),
    "ipr_first": ({"name": "slimgpt", "ipr_first": 2}, ["method.ipr_first"]),
    "contradiction": ({"name": "flap", "bias_compensation": False, "reconstruct": "bias"},
                      ["set only method.reconstruct"]),
    "magnitude-key": ({"name": "magnitude", "reconstruct": "lsq"}, ["method.reconstruct"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_exit_2_with_one_line(tmp_path, text_file, case):
    section, fragments = BAD[case]
    model_dir = save_tiny(tmp_path / "llama", "llama")
    result = step("calibrate", tmp_path / "proj",
                  recipe_file(tmp_path, model_dir, text_file, section))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_least_squares_after_hidden_pruning_is_refused_at_apply(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "llama", "llama")
    project = tmp_path / "proj"
    recipe = recipe_file(tmp_path, model_dir, text_file,
                         {"name": "magnitude", "reconstruct": "least_squares",
                          "round_to": 4})  # aligned (16), the 64-wide hidden size stays whole
    for name in STEPS[:3]:
        assert step(name, project, recipe if name == "calibrate" else None).exit_code == 0
    result = step("apply", project)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "prune_hidden: false" in lines[0], result.stderr
    assert not (project / "pruned").exists()
