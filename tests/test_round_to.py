"""``method.round_to``: kept MLP widths are multiples (or the full width), the weakest channels go,
the parameter target is still met, unset is the aligned default, bad values exit 2 through the
CLI."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import save_tiny, tiny_model, tiny_moe
from typer.testing import CliRunner

from prunectl.cli import app
from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.width.units import round_kept_channels
from prunectl.modeling.params import count_parameters

INTERMEDIATE = 256
WIDTH_METHODS = [("flap", {}), ("flap", {"structure": "UL-MM"}), ("wanda-sp", {}),
                 ("mag-sp", {"structure": "AL-AM"}), ("taylor", {"layer_start": 0})]


def test_helper_rounds_each_layer_to_a_side_and_stays_near_the_target():
    scores = {i: torch.linspace(1.0, 0.0, 100) for i in range(4)}
    sizes, costs = dict.fromkeys(range(4), 100), dict.fromkeys(range(4), 10)
    kept = {0: 37, 1: 44, 2: 100, 3: 3}
    rounded = round_kept_channels(kept, sizes, scores, costs, 8, excess=0)
    assert rounded[2] == 100 and rounded[3] == 8  # untouched; below min_kept goes up
    assert all(k % 8 == 0 or k == 100 for k in rounded.values())
    assert all(abs(rounded[i] - kept[i]) < 8 for i in kept)
    removed_change = sum((kept[i] - rounded[i]) * 10 for i in kept)
    assert abs(removed_change) <= 8 * 10 / 2
    assert round_kept_channels(kept, sizes, scores, costs, 1, excess=0) == kept
    assert round_kept_channels({0: 3}, {0: 100}, scores, costs, 8, 0, min_kept=0) == {0: 0}
    with pytest.raises(UserError, match="round_to=128 exceeds the 100 MLP channels"):
        round_kept_channels(kept, sizes, scores, costs, 128, excess=0)


def run_method(name: str, options: dict, ratio: float = 0.3):
    model = tiny_model("llama", seed=11, num_attention_heads=8, num_key_value_heads=4,
                       intermediate_size=INTERMEDIATE)
    tokens = torch.randint(4, 260, (6, 32), generator=torch.Generator().manual_seed(11))
    method = create_method(parse_method_config({"name": name, **options}))
    inputs = Inputs(model, tokens, batch_size=4, target=Target(params_ratio=ratio))
    stats = method.statistics(inputs) if method.uses_statistics else {}
    scores = method.score(inputs, stats)
    plan = method.search(inputs, scores)
    return model, method, inputs, plan, stats, scores


def kept_widths(plan, layers: int) -> list[int]:
    return [INTERMEDIATE if plan.layers.get(i) is None or plan.layers[i].mlp_channels is None
            else len(plan.layers[i].mlp_channels) for i in range(layers)]


@pytest.mark.parametrize(("name", "options"), WIDTH_METHODS)
@pytest.mark.parametrize("multiple", [8, 64])
def test_widths_are_multiples_and_the_target_is_met(name, options, multiple):
    model, method, inputs, plan, stats, scores = run_method(name, {**options, "round_to": multiple})
    widths = kept_widths(plan, 4)
    assert all(w % multiple == 0 for w in widths), widths
    total = count_parameters(model)["total"]
    channel = 3 * model.config.hidden_size
    _, _, _, exact, _, _ = run_method(name, {**options, "round_to": 1})
    exact_widths = kept_widths(exact, 4)
    assert all(abs(w - e) < multiple for w, e in zip(widths, exact_widths, strict=True))
    for i, w in enumerate(widths):  # the kept channels are the best-scored ones
        lp = plan.layers.get(i)
        if lp is not None and lp.mlp_channels is not None:
            best = scores[f"layers.{i}.channels"].float().argsort(descending=True, stable=True)[:w]
            assert set(lp.mlp_channels) == set(best.tolist())
    pruned = method.apply(inputs, plan, stats)
    removed = total - count_parameters(pruned)["total"]
    exact_removed = sum((INTERMEDIATE - e) * channel for e in exact_widths)
    rounded_removed = sum((INTERMEDIATE - w) * channel for w in widths)
    # the stated rule: half a step of one layer; a uniform cut (UL-*) moves every layer together
    # and stays uniform, so half a step of all of them
    uniform = getattr(method.config, "structure", "").startswith("UL")
    half_step = multiple * channel / 2 * (len(widths) if uniform else 1)
    if uniform:
        assert len(set(widths)) == 1, widths
    assert abs(rounded_removed - exact_removed) <= half_step + channel
    if name != "taylor":
        assert removed == plan.achieved["params_removed"]
    assert abs(removed - 0.3 * total) <= abs(exact.achieved.get("params_removed", removed)
                                             - 0.3 * total) + half_step + channel


@pytest.mark.parametrize(("name", "options"), WIDTH_METHODS)
def test_the_default_is_the_aligned_rule(name, options):
    """Unset ``round_to`` is ``modeling.alignment``'s 64 here (256 channels hold 4 steps); the
    exact cut of ``round_to: 1`` is checked against the old code in test_alignment.py."""
    *_, default, _, _ = run_method(name, options)
    *_, aligned, _, _ = run_method(name, {**options, "round_to": 64})
    assert default == aligned


@pytest.mark.parametrize("multiple", [8, 64])
def test_magnitude_keeps_multiples(multiple):
    _, _, _, plan, _, _ = run_method("magnitude", {"round_to": multiple, "prune_hidden": False})
    assert plan.achieved["intermediate_size"] % multiple == 0
    with pytest.raises(UserError, match="round_to=512 exceeds the 256 MLP channels"):
        run_method("magnitude", {"round_to": 512})


runner = CliRunner()


@pytest.mark.parametrize(("value", "says"), [(0, "round_to"), (-8, "round_to"),
                                             ("eight", "round_to"), (512, "exceeds")])
def test_bad_round_to_exits_2_with_one_line(tmp_path, text_file, value, says):
    model_dir = save_tiny(tmp_path / "llama", "llama", num_attention_heads=8,
                          num_key_value_heads=4)
    recipe = {
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 4, "seqlen": 16, "seed": 1},
        "method": {"name": "wanda-sp", "round_to": value},
        "target": {"params_ratio": 0.2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    project = str(tmp_path / "proj")
    result = runner.invoke(app, ["calibrate", "-p", project, "-r", str(path), "--quiet"])
    for step in ("score", "search"):
        if result.exit_code != 0:
            break
        result = runner.invoke(app, [step, "-p", project, "--quiet"])
    assert result.exit_code == 2, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_mixture_of_experts_layers_have_no_channels_to_round():
    model = tiny_moe("qwen3_moe", seed=2)
    tokens = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(2))
    plans = []
    for multiple in (1, 8):
        method = create_method(parse_method_config({"name": "flap", "round_to": multiple}))
        inputs = Inputs(model, tokens, batch_size=2, target=Target(params_ratio=0.05))
        stats = method.statistics(inputs)
        plans.append(method.search(inputs, method.score(inputs, stats)))
    assert plans[0].layers == plans[1].layers and plans[0].achieved == plans[1].achieved
