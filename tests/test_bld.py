"""Block-local distillation (``method.reconstruct: bld``): every distilled block is closer to its
parent block than its least-squares start (measured on the inputs it sees, with plain hooks);
puzzle's variants score lower; a SIGKILLed ``apply`` resumes to the same model bytes."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from helpers import save_tiny, tiny_model
from typer.testing import CliRunner

from prunectl.cli import app

from prunectl.methods.inputs import Inputs
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.puzzle.config import PuzzleConfig
from prunectl.methods.puzzle.library import build_library
from prunectl.methods.width import reconstruct
from prunectl.methods.width.reconstruct import ReconstructOptions, least_squares_solutions
from prunectl.methods.width.sequential import hook_solution
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import Layers

PLAN = Plan(method="flap", layers={
    0: LayerPlan(q_heads=[0, 1], kv_heads=[0], mlp_channels=list(range(0, 96, 2))),
    1: LayerPlan(mlp_channels=list(range(40))),
    2: LayerPlan(q_heads=[2, 3], kv_heads=[1]),
})
runner = CliRunner()
BLD = ReconstructOptions(reconstruct="bld", bld_steps=24, bld_lr=1e-3)


def _block_error(adapter, i, name, x, solution=None) -> float:
    """``||block(x) - parent(x)||^2`` of layer ``i``'s attention / MLP block, the block computing
    ``solution`` through hooks (None: the parent itself)."""
    def run(h):
        if name == "o_proj":
            return adapter.attention_block(i, h, adapter.block_inputs(h))
        return adapter.mlp_block(i, h)

    with torch.inference_mode():
        parent = run(x).double()
        linear = getattr(adapter, name)(i)
        handles = hook_solution(adapter.model, linear, solution)
        try:
            child = run(x).double()
        finally:
            for handle in handles:
                handle.remove()
    return float((child - parent).pow(2).sum())


def test_every_distilled_block_is_closer_to_its_parent_than_its_least_squares_start(
        monkeypatch):
    model = tiny_model("llama", seed=3)
    adapter = Adapter(model)
    tokens = torch.randint(4, 260, (8, 32), generator=torch.Generator().manual_seed(1))
    starts, real = {}, reconstruct.distill_block

    def recorded(module, output, solution, run, inputs, *args):
        starts[id(output)] = copy.deepcopy(solution)
        return real(module, output, solution, run, inputs, *args)

    monkeypatch.setattr(reconstruct, "distill_block", recorded)
    solutions = least_squares_solutions(Layers(adapter, tokens, 4), PLAN, "self", 1.0, bld=BLD)
    assert len(starts) == 4
    # the inputs every block saw: the model with every distilled block hooked in, plain hooks
    seen, handles = {}, []
    for key, solution in solutions.items():
        _, i, name = key.split(".")
        handles += hook_solution(model, getattr(adapter, name)(int(i)), solution)
        norm = adapter.input_norm(int(i)) if name == "o_proj" else adapter.post_attention_norm(
            int(i))
        handles.append(norm.register_forward_pre_hook(
            lambda _m, args, key=key: seen.setdefault(key, []).append(args[0])))
    with torch.inference_mode():
        for chunk in tokens.split(4):
            model(chunk)
    for handle in handles:
        handle.remove()
    for key, solution in solutions.items():
        _, i, name = key.split(".")
        x = torch.cat(seen[key])
        start = starts[id(getattr(adapter, name)(int(i)))]
        assert start.trained == {} and solution.trained  # q/k/v or gate/up trained too
        before = _block_error(adapter, int(i), name, x, start)
        after = _block_error(adapter, int(i), name, x, solution)
        assert after < 0.9 * before, (key, before, after)
        kept = sorted(set(range(solution.weight.shape[1] - 1)) - set(solution.removed))
        assert torch.all(solution.weight[:, solution.removed] == 0)  # removed columns stay zero
        assert kept


def test_bld_lowers_every_puzzle_variants_local_score():
    """``local`` scores are each variant's block output error on its dense inputs."""
    model = tiny_model("llama", num_hidden_layers=2)
    tokens = torch.randint(3, 260, (6, 20), generator=torch.Generator().manual_seed(7))

    def library(**options):
        config = PuzzleConfig(mlp_widths=[0.5], score="local", **options)
        return build_library(Inputs(model, tokens, batch_size=3), config)

    ls = library(reconstruct="least_squares")
    bld = library(reconstruct="bld", bld_steps=24, bld_lr=1e-3)
    for block in ("attn", "mlp"):
        assert torch.equal(bld[f"{block}.order"], ls[f"{block}.order"])
        partial = ls[f"{block}.score"][:, 1:-1]  # neither removed nor whole: trained
        assert torch.all(bld[f"{block}.score"][:, 1:-1] < partial), (block, partial)
        assert torch.equal(bld[f"{block}.score"][:, 0], ls[f"{block}.score"][:, 0])


@pytest.mark.slow  # spawns processes
def test_a_sigkilled_bld_apply_resumes_to_the_same_model(tmp_path, text_file):
    """Killed between two distilled blocks (after layer 1's attention is checkpointed), the same
    command resumes at layer 1's MLP and writes the uninterrupted run's weights byte for byte."""
    from killpoints import kill_env, prunectl

    model_dir = save_tiny(tmp_path / "llama", "llama")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 6, "seqlen": 32, "seed": 1,
                        "batch_size": 3},
        "method": {"name": "flap", "reconstruct": "bld", "bld_steps": 6},
        "target": {"params_ratio": 0.2, "ratio_of": "non_embedding"},
    }))

    def apply(project, env=None):
        for step in ("calibrate", "score", "search"):  # in this process: only apply is killed
            assert runner.invoke(app, [step, "-p", str(project), "-r", str(recipe), "-q"]
                                 ).exit_code == 0
        return prunectl("apply", "-p", project, "-r", recipe, "--quiet", env=env)

    straight = tmp_path / "straight"
    assert apply(straight).returncode == 0
    project = tmp_path / "killed"
    killed = apply(project, kill_env(tmp_path / "hook", project, "apply/layers/layers.jsonl",
                                     "after", 3))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (project / "apply" / "layers" / "solutions-2.safetensors").exists()
    assert not (project / "apply" / "layers" / "solutions-3.safetensors").exists()
    again = apply(project)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (project / "apply").exists()
    weights = sorted(p.name for p in (straight / "pruned").glob("*.safetensors"))
    assert weights
    for name in weights:
        assert (project / "pruned" / name).read_bytes() == (straight / "pruned" / name).read_bytes()
