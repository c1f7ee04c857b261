"""REAP expert pruning: statistics against an independent computation, the criterion's use,
per-layer resumption, targets, and the pipeline through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import MOE_CONFIGS, byte_tokenizer, invoke, save_tiny, tiny_moe, write_recipe
from transformers import AutoModelForCausalLM

from prunectl.errors import UserError
from prunectl.io import load_tensors
from prunectl.methods.inputs import Journal
from prunectl.methods.reap import collect
from prunectl.methods.reap.collect import collect_expert_stats
from prunectl.methods.reap.saliency import ExpertStats
from prunectl.methods.reap.targets import expert_parameters, experts_to_remove
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.moe import moe_forward
from prunectl.modeling.params import count_parameters
from prunectl.pipelines.layers import Layers
from prunectl.recipe.sections import TargetConfig

TOKENS = torch.randint(4, 260, (5, 12), generator=torch.Generator().manual_seed(4))


def moe_inputs(model, tokens=TOKENS) -> dict[int, torch.Tensor]:
    """Each MoE block's input during one ordinary forward of the dense model ([tokens, H])."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.mlp.register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]))))
    with torch.inference_mode():
        model(tokens)
    for h in handles:
        h.remove()
    return seen


@torch.inference_mode()
def reference_sums(block, x: torch.Tensor, renormalise: bool) -> dict[str, torch.Tensor]:
    """The four sums, written out token by token and expert by expert from the raw weights."""
    w_gate_up, w_down = block.experts.gate_up_proj, block.experts.down_proj
    n, inter = w_gate_up.shape[0], w_down.shape[2]
    sums = {k: torch.zeros(n, dtype=torch.float64) for k in ("count", "gate", "reap", "ean")}
    probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
    for t in range(x.shape[0]):
        top = torch.topk(probs[t], block.gate.top_k)
        gates = top.values / top.values.sum() if renormalise else top.values
        for g, e in zip(gates.tolist(), top.indices.tolist()):
            h = w_gate_up[e] @ x[t]
            out = w_down[e] @ (F.silu(h[:inter]) * h[inter:])
            norm = out.double().norm().item()
            sums["count"][e] += 1
            sums["gate"][e] += g
            sums["reap"][e] += g * norm
            sums["ean"][e] += norm
    return sums


@pytest.mark.parametrize("family", sorted(MOE_CONFIGS))
def test_expert_by_expert_forward_equals_the_block(family):
    model = tiny_moe(family)
    x = moe_inputs(model)[1]
    block = model.model.layers[1].mlp
    with torch.inference_mode():
        out, routed = moe_forward(block, x)
        torch.testing.assert_close(out, block(x[None])[0], rtol=1e-5, atol=1e-5)
    assert routed.index.shape == routed.norms.shape == (x.shape[0], 2)


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "mixtral"])
def test_statistics_equal_an_independent_computation(family):
    model = tiny_moe(family)
    inputs = moe_inputs(model)
    stats = collect_expert_stats(Layers(Adapter(model), TOKENS, 2))  # 5 windows: uneven batches
    renormalise = getattr(model.config, "norm_topk_prob", True)
    for i, x in inputs.items():
        ref = reference_sums(model.model.layers[i].mlp, x, renormalise)
        got = ExpertStats.from_dict(stats, f"layers.{i}.experts")
        tokens = TOKENS.numel()
        assert got.tokens.item() == tokens and got.count.sum().item() == 2 * tokens
        close = dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.saliency("frequency"), ref["count"])
        torch.testing.assert_close(got.saliency("gate"), ref["gate"] / tokens, **close)
        torch.testing.assert_close(got.saliency("ean"), ref["ean"], **close)
        mean = torch.where(ref["count"] > 0, ref["reap"] / ref["count"].clamp(min=1), 0.0)
        torch.testing.assert_close(got.saliency("reap"), mean, **close)


def test_layerwise_execution_gives_the_same_statistics():
    from prunectl.modeling.placement import stream_layers

    whole = collect_expert_stats(Layers(Adapter(tiny_moe("qwen2_moe")), TOKENS, 2))
    streamed = stream_layers(tiny_moe("qwen2_moe"), torch.device("cpu"))
    layerwise = collect_expert_stats(Layers(Adapter(streamed), TOKENS, 2))
    for name, value in whole.items():
        torch.testing.assert_close(layerwise[name], value)


def unequal_experts(seed: int = 0):
    """A Mixtral whose experts differ on purpose: output scales spread over two decades."""
    model = tiny_moe("mixtral", seed=seed, num_hidden_layers=1)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    scales = torch.logspace(-1, 1, 8)[order]
    with torch.no_grad():
        model.model.layers[0].mlp.experts.down_proj.mul_(scales[:, None, None])
    return model


@torch.inference_mode()
def masked_block_output(block, x: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """The block with ``removed`` unroutable (router logits -inf), as surgery leaves it."""
    logits = x @ block.gate.weight.T
    logits[:, removed] = float("-inf")
    top = torch.topk(torch.softmax(logits, -1), block.gate.top_k)
    gates = top.values / top.values.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for slot in range(block.gate.top_k):
        for e in top.indices[:, slot].unique().tolist():
            rows = top.indices[:, slot] == e
            h = block.experts.gate_up_proj[e] @ x[rows].T
            inter = h.shape[0] // 2
            y = (block.experts.down_proj[e] @ (F.silu(h[:inter]) * h[inter:])).T
            out[rows] += gates[rows, slot, None] * y
    return out


def test_removing_the_experts_reap_ranks_last_changes_the_output_less_than_random():
    model = unequal_experts()
    x = moe_inputs(model)[0]
    block = model.model.layers[0].mlp
    reap = ExpertStats.from_dict(collect_expert_stats(Layers(Adapter(model), TOKENS, 4)),
                                 "layers.0.experts").saliency("reap")
    with torch.inference_mode():
        dense = masked_block_output(block, x, [])
        torch.testing.assert_close(dense, block(x[None])[0], rtol=1e-4, atol=1e-5)

        def change(removed):
            return (masked_block_output(block, x, removed) - dense).norm().item()

        lowest = torch.argsort(reap)[:4].tolist()
        generator = torch.Generator().manual_seed(1)
        random = [change(torch.randperm(8, generator=generator)[:4].tolist()) for _ in range(20)]
    assert change(lowest) <= min(random)  # no random draw does better (one draws the same set)
    assert change(lowest) < 0.6 * sum(random) / len(random)


class StopAfter:
    """A UI whose progress iteration is killed after ``n`` layers, like a SIGKILL between layers."""

    def __init__(self, n: int):
        self.n = n

    def progress(self, iterable, total=None, description=""):
        for done, item in enumerate(iterable):
            if done == self.n:
                raise KeyboardInterrupt
            yield item


def test_an_interrupted_pass_resumes_at_the_next_layer(tmp_path, monkeypatch):
    model = tiny_moe("qwen3_moe")
    full = collect_expert_stats(Layers(Adapter(model), TOKENS, 2))
    progress = tmp_path / "progress"
    with pytest.raises(KeyboardInterrupt):
        collect_expert_stats(Layers(Adapter(model), TOKENS, 2), Journal(progress, "k"),
                             StopAfter(2))
    assert Journal(progress, "k").records("layers.jsonl")[-1]["layers_done"] == 2
    layers_run = []
    real = collect.moe_forward
    monkeypatch.setattr(collect, "moe_forward",
                        lambda block, x: layers_run.append(block) or real(block, x))
    resumed = collect_expert_stats(Layers(Adapter(model), TOKENS, 2), Journal(progress, "k"))
    assert set(map(id, layers_run)) == {id(model.model.layers[2].mlp)}  # layers 0, 1 not rerun
    assert resumed.keys() == full.keys()
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-9)
    assert not progress.exists()
    # progress made with other inputs is not used
    with pytest.raises(KeyboardInterrupt):
        collect_expert_stats(Layers(Adapter(model), TOKENS, 2), Journal(progress, "k"),
                             StopAfter(1))
    layers_run.clear()
    collect_expert_stats(Layers(Adapter(model), TOKENS[:4], 2), Journal(progress, "k"))
    assert len({id(b) for b in layers_run}) == 3


def test_targets_keep_top_k_and_reach_the_parameter_share():
    adapter = Adapter(tiny_moe("mixtral"))
    assert experts_to_remove(adapter, TargetConfig(experts_ratio=0.5)) == {0: 4, 1: 4, 2: 4}
    with pytest.raises(UserError, match="leaves layers.0 1 experts but the router picks 2"):
        experts_to_remove(adapter, TargetConfig(experts_ratio=0.9))
    with pytest.raises(UserError, match="removes no expert of 8"):
        experts_to_remove(adapter, TargetConfig(experts_ratio=0.1))
    with pytest.raises(UserError, match="set target.experts_ratio"):
        experts_to_remove(adapter, TargetConfig(blocks=2))
    total = count_parameters(adapter.model)["total"]
    per_step = 3 * expert_parameters(adapter, 0)
    assert per_step == 3 * (2 * 32 * 64 + 64 * 32 + 64)
    n = experts_to_remove(adapter, TargetConfig(params_ratio=0.2))[0]
    assert n * per_step >= 0.2 * total > (n - 1) * per_step
    with pytest.raises(UserError, match="params_ratio=0.9 is out of reach"):
        experts_to_remove(adapter, TargetConfig(params_ratio=0.9))


def save_moe(directory: Path, family: str) -> Path:
    tiny_moe(family).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


#: these tests' calibration, beside the shared defaults
CALIBRATION = {"seqlen": 16, "batch_size": 2}


def test_reap_through_the_cli_gives_a_plain_checkpoint(tmp_path, text_file):
    model_dir = save_moe(tmp_path / "qwen2moe", "qwen2_moe")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, calibration=CALIBRATION,
                          method={"name": "reap"}, target={"experts_ratio": 0.25})
    project = tmp_path / "proj"
    for step in ("calibrate", "score", "search", "apply"):
        result = invoke(step, "-p", project, "-r", recipe, "--quiet")
        assert result.exit_code == 0, result.output
    assert not (project / "calibration" / "progress").exists()
    plan = json.loads((project / "search" / "plan.json").read_text())
    scores = load_tensors(project / "scores" / "scores.safetensors")
    for i in range(3):
        saliency = scores[f"layers.{i}.experts"]
        kept = plan["layers"][str(i)]["experts"]
        gone = sorted(set(range(8)) - set(kept))
        assert len(gone) == 2 and max(saliency[gone]) <= min(saliency[kept])
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    assert plan["achieved"]["params_removed"] == info["dense"]["total"] - info["pruned"]["total"]
    pruned = AutoModelForCausalLM.from_pretrained(project / "pruned")  # no remote code
    assert pruned.config.num_experts == 6
    assert pruned.model.layers[0].mlp.shared_expert.down_proj.weight.shape == (64, 48)


@pytest.mark.parametrize(
    ("method", "target", "message"),
    [
        ({"name": "reap"}, {"experts_ratio": 0.9}, "leaves layers.0 1 experts"),
        ({"name": "reap", "criterion": "loud"}, {"experts_ratio": 0.25}, "criterion"),
        ({"name": "reap"}, {"experts_ratio": 0.25, "params_ratio": 0.1}, "experts_ratio"),
    ],
)
def test_bad_reap_settings_exit_2_with_one_line(tmp_path, text_file, method, target, message):
    model_dir = save_moe(tmp_path / "m", "mixtral")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, calibration=CALIBRATION,
                          method=method, target=target)
    result = invoke("calibrate", "-p", tmp_path / "p", "-r", recipe)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "p" / "calibration" / "stats.safetensors").exists()


def test_reap_on_a_dense_model_lists_the_moe_types(tmp_path, text_file):
    recipe = write_recipe(tmp_path / "recipe.yaml", save_tiny(tmp_path / "llama"), text_file,
                          calibration=CALIBRATION, method={"name": "reap"},
                          target={"experts_ratio": 0.25})
    result = invoke("calibrate", "-p", tmp_path / "p", "-r", recipe)
    assert result.exit_code == 2
    assert "'llama' has none; mixture-of-experts model types: qwen2_moe, qwen3_moe" in result.output
