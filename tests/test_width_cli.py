"""Width pruning through the CLI: calibrate -> score -> search -> apply -> export on tiny models,
with the exported model checked against the plan applied in-process to the dense model."""

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

#: the recipe sections of these tests beside the method, over the shared defaults
SECTIONS = {"calibration": {"nsamples": 6, "batch_size": 4}, "target": {"params_ratio": 0.25},
            "export": {"dtype": "float32"}}


def steps(project, recipe):
    for step in ("calibrate", "score", "search", "apply", "export"):
        args = [step, "-p", project, "--quiet", "--json"]
        if step == "calibrate":
            args += ["-r", recipe]
        result = invoke(*args)
        assert result.exit_code == 0, (step, result.output)


def in_process(model_dir, method_section, plan, stats):
    """The dense model pruned by the method's own ``apply`` with the saved plan and statistics."""
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    method = create_method(parse_method_config(method_section))
    return method.apply(Inputs(dense), plan, stats).eval()


@pytest.mark.parametrize("family", ["qwen2", "phi3"])
def test_flap_through_the_cli(tmp_path, text_file, family):
    model_dir = save_tiny(tmp_path / family, family, num_attention_heads=8, num_key_value_heads=4)
    section = {"name": "flap", "metric": "WIFV", "structure": "AL-AM"}
    project = tmp_path / "proj"
    steps(project, write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, method=section,
                                **SECTIONS))
    stats = load_tensors(project / "calibration" / "stats.safetensors")
    assert {"layers.3.o_proj.mean", "layers.3.down_proj.var", "layers.0.o_proj.sumsq"} <= set(stats)
    scores = load_tensors(project / "scores" / "scores.safetensors")
    assert scores["layers.0.heads"].shape == (8,) and scores["layers.0.channels"].shape == (96,)
    plan = Plan.model_validate(json.loads((project / "search" / "plan.json").read_text()))
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert info["dense"]["total"] - info["pruned"]["total"] == plan.achieved["params_removed"]
    assert abs(info["params_ratio_removed"] - 0.25) < 0.02
    kv = sum(2 * len(lp.kv_heads if lp.kv_heads is not None else range(4)) * 8 * 4
             for lp in (plan.layer(i) for i in range(4)) if lp.attention)  # head_dim 8, fp32
    assert info["per_token"]["pruned"]["kv_cache_bytes"] == kv
    assert info["per_token"]["dense"]["kv_cache_bytes"] == 4 * 2 * 4 * 8 * 4
    exported = AutoModelForCausalLM.from_pretrained(project / "export", trust_remote_code=True)
    expected = in_process(model_dir, section, plan, stats)
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(ids).logits, expected(ids).logits)


def test_magnitude_through_the_cli_exports_a_plain_model(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "llama", "llama", num_attention_heads=8,
                          num_key_value_heads=4, tie_word_embeddings=True)
    section = {"name": "magnitude", "pruning_ratio": 0.3}
    project = tmp_path / "proj"
    steps(project, write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, method=section,
                                **SECTIONS))
    assert not (project / "calibration" / "tokens.safetensors").exists()  # data-free
    plan = Plan.model_validate(json.loads((project / "search" / "plan.json").read_text()))
    config = json.loads((project / "export" / "config.json").read_text())
    assert "auto_map" not in config and config["hidden_size"] == len(plan.hidden_channels)
    exported = AutoModelForCausalLM.from_pretrained(project / "export").eval()  # no remote code
    assert exported.lm_head.weight is exported.get_input_embeddings().weight
    expected = in_process(model_dir, section, plan, {})
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, expected(ids).logits)
