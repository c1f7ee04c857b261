"""Block and width methods on mixture-of-experts models, through the CLI: the MoE MLP block is
one candidate of the block search, width methods prune attention heads only, and the methods
that cannot prune an MoE model refuse it with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from helpers import byte_tokenizer, tiny_moe
from prunectl.cli import app
from prunectl.methods.removal_order import candidate_counts, candidate_names

runner = CliRunner()
IDS = torch.randint(4, 260, (2, 12), generator=torch.Generator().manual_seed(5))


def project_for(tmp_path: Path, text: Path, family: str, method: dict, target: dict) -> tuple:
    model_dir = tmp_path / family
    if not model_dir.exists():
        tiny_moe(family).save_pretrained(model_dir)
        byte_tokenizer().save_pretrained(model_dir)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 4, "seqlen": 16, "seed": 1},
        "method": method, "target": target,
    }))
    return model_dir, recipe, tmp_path / "proj"


def run_steps(project: Path, recipe: Path, steps=("calibrate", "score", "search", "apply")):
    for step in steps:
        result = runner.invoke(app, [step, "-p", str(project), "-r", str(recipe), "--quiet"])
        if result.exit_code:
            return result
    return result


def test_block_search_removes_moe_blocks_as_units(tmp_path, text_file):
    model_dir, recipe, project = project_for(
        tmp_path, text_file, "qwen3_moe", {"name": "block", "block_type": "mlp"}, {"blocks": 1})
    result = run_steps(project, recipe)
    assert result.exit_code == 0, result.output
    plan = json.loads((project / "search" / "plan.json").read_text())
    (removed,) = plan["removal_order"][:1]
    layer = int(removed.split(".")[1])
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    counts = candidate_counts(dense, candidate_names(3, "mlp"))
    block = dense.model.layers[layer]
    assert counts.per_candidate[removed] == sum(
        p.numel() for p in [*block.mlp.parameters(), *block.post_attention_layernorm.parameters()])
    dense.model.layers[layer].mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    pruned = AutoModelForCausalLM.from_pretrained(project / "pruned", trust_remote_code=True)
    with torch.inference_mode():
        torch.testing.assert_close(pruned(IDS).logits, dense(IDS).logits, rtol=1e-5, atol=1e-5)


def test_wanda_sp_prunes_only_attention_heads_of_an_moe_model(tmp_path, text_file):
    model_dir, recipe, project = project_for(
        tmp_path, text_file, "mixtral", {"name": "wanda-sp"}, {"params_ratio": 0.08})
    result = run_steps(project, recipe)
    assert result.exit_code == 0, result.output
    plan = json.loads((project / "search" / "plan.json").read_text())
    assert plan["layers"] and all(
        lp["mlp_channels"] is None and lp["experts"] is None and lp["mlp"]
        for lp in plan["layers"].values())
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    head_dim = 16
    with torch.no_grad():  # a removed head reaches the residual stream only through o_proj
        for i, lp in plan["layers"].items():
            gone = sorted(set(range(4)) - set(lp["q_heads"]))
            columns = [h * head_dim + d for h in gone for d in range(head_dim)]
            dense.model.layers[int(i)].self_attn.o_proj.weight[:, columns] = 0
    pruned = AutoModelForCausalLM.from_pretrained(project / "pruned", trust_remote_code=True)
    assert pruned.config.num_local_experts == 8
    with torch.inference_mode():
        torch.testing.assert_close(pruned(IDS).logits, dense(IDS).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "method", "message"),
    [
        ("qwen3_moe", {"name": "magnitude"}, "method magnitude prunes dense MLP channels"),
        ("mixtral", {"name": "taylor"}, "method taylor prunes dense MLP channels"),
        ("olmoe", {"name": "flap"}, "'olmoe' normalises q and k over all heads at once"),
    ],
)
def test_width_methods_that_cannot_prune_a_moe_model_exit_2(tmp_path, text_file, family, method,
                                                            message):
    _, recipe, project = project_for(tmp_path, text_file, family, method, {"params_ratio": 0.1})
    result = run_steps(project, recipe, ("calibrate",))
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
