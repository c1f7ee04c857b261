"""``method: puzzle``'s solve, costs and verification on tiny models with synthetic libraries
(random scores of the library's shapes): the MILP against brute force over every combination,
the cost model against the applied model, verified perplexity against the applied model's."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.inputs import Inputs, Journal, Target
from prunectl.methods.puzzle import verify
from prunectl.methods.puzzle.config import PuzzleConfig
from prunectl.methods.puzzle.costs import variant_costs
from prunectl.methods.puzzle.method import PuzzleMethod, choice_plan
from prunectl.methods.puzzle.solve import Choice, Infeasible, candidates, solve
from prunectl.methods.width.collect import collect_statistics
from prunectl.modeling import cost
from prunectl.modeling.params import count_parameters
from prunectl.modeling.structure import from_model, with_plan

WIDTHS = [0, 24, 48, 96]  # MLP options of the tiny model (96 channels)


def library(model, seed: int, widths=WIDTHS) -> dict[str, torch.Tensor]:
    """Random scores in the library's format (dense options score 0, removal the most)."""
    g = torch.Generator().manual_seed(seed)
    s = from_model(model)
    layers, groups, channels = len(s.layers), s.layers[0].kv_heads, s.layers[0].intermediate
    attn = torch.rand(layers, groups + 1, generator=g, dtype=torch.float64)
    attn = attn.sort(dim=1, descending=True).values
    attn[:, -1] = 0
    mlp = torch.rand(layers, len(widths), generator=g, dtype=torch.float64)
    mlp = mlp.sort(dim=1, descending=True).values
    mlp[:, -1] = 0
    return {"attn.order": torch.stack([torch.randperm(groups, generator=g) for _ in range(layers)]),
            "attn.score": attn,
            "mlp.order": torch.stack([torch.randperm(channels, generator=g)
                                      for _ in range(layers)]),
            "mlp.channels": torch.tensor([widths] * layers),
            "mlp.score": mlp}


def brute_force(model, lib, caps: dict[str, int], exclude=(), diversity=1, biases=False):
    """Every combination, costed by the plan it gives (``with_plan``, not the solver's tables;
    ``biases``: narrowed projections get one); the lowest summed score within ``caps``."""
    s = from_model(model)
    layers, groups = lib["attn.score"].shape
    group = [layer.heads // layer.kv_heads for layer in s.layers]
    best = None
    options = list(itertools.product(range(groups), range(lib["mlp.score"].shape[1])))
    for combo in itertools.product(options, repeat=layers):
        attn, mlp = tuple(a for a, _ in combo), tuple(m for _, m in combo)
        score = float(sum(lib["attn.score"][i, attn[i]] + lib["mlp.score"][i, mlp[i]]
                          for i in range(layers)))
        choice = Choice(attn, mlp, score)
        if any(choice.differences(e) < diversity for e in exclude):
            continue
        if best is not None and score >= best.score:
            continue
        plan = choice_plan(choice, lib, group)
        added = [f"layers.{i}.{name}" for i, lp in plan.layers.items()
                 for name, narrowed in (("o_proj", lp.attention and lp.kv_heads is not None),
                                        ("down_proj", lp.mlp and lp.mlp_channels is not None))
                 if narrowed] if biases else []
        pruned = with_plan(s, plan, added)
        totals = {"params": cost.parameters(pruned)["total"],
                  "kv_cache": cost.kv_cache_bytes_per_token(pruned, 4),
                  "flops": cost.flops_per_token(pruned)}
        if all(totals[k] <= cap for k, cap in caps.items()):
            best = choice
    return best


def scores_of(lib):
    return lib["attn.score"].numpy(), lib["mlp.score"].numpy()


@pytest.mark.parametrize(("seed", "biases"), [(0, False), (1, False), (2, True), (3, True)])
def test_solver_equals_brute_force(seed, biases):
    model = tiny_model("llama", num_hidden_layers=3)
    lib = library(model, seed)
    costs = variant_costs(from_model(model), lib["mlp.channels"].numpy(), 4, biases)
    rng = np.random.default_rng(seed)
    for kinds in (["params"], ["kv_cache"], ["flops"], ["params", "kv_cache", "flops"]):
        caps = {k: int(costs.dense[k] * (1 - rng.uniform(0.1, 0.6))) for k in kinds}
        expected = brute_force(model, lib, caps, biases=biases)
        got = solve(*scores_of(lib), costs, caps)
        assert got.score == pytest.approx(expected.score, abs=1e-12), (kinds, caps)
        assert all(costs.total(k, list(got.attn), list(got.mlp)) <= cap for k, cap in caps.items())


def test_diverse_solutions_are_the_next_best_that_differ_enough():
    model = tiny_model("llama", num_hidden_layers=3)
    lib = library(model, 5)
    costs = variant_costs(from_model(model), lib["mlp.channels"].numpy(), 4)
    caps = {"params": int(costs.dense["params"] * 0.8)}
    found = candidates(*scores_of(lib), costs, caps, count=3, diversity=2)
    assert len(found) == 3
    for a, b in itertools.combinations(found, 2):
        assert a.differences(b) >= 2
    assert found[1].score == pytest.approx(
        brute_force(model, lib, caps, found[:1], 2).score, abs=1e-12)
    assert found[2].score == pytest.approx(
        brute_force(model, lib, caps, found[:2], 2).score, abs=1e-12)


def test_infeasible_budget_is_a_user_error():
    model = tiny_model("llama", num_hidden_layers=2)
    lib = library(model, 0)
    costs = variant_costs(from_model(model), lib["mlp.channels"].numpy(), 4)
    below = costs.fixed("params") - 1  # less than the embeddings alone
    with pytest.raises(Infeasible, match="no combination of the library's variants") as error:
        solve(*scores_of(lib), costs, {"params": below})
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)


def calibration(seed=0, n=6, seqlen=32):
    return torch.randint(4, 260, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("target", "reconstruct"), [
    (Target(params_ratio=0.3), "none"),
    (Target(params_ratio=0.3), "least_squares"),
    (Target(params_ratio=0.2, ratio_of="non_embedding", kv_cache_ratio=0.4), "least_squares"),
    (Target(flops_ratio=0.35), "none")])
def test_applied_plan_has_the_costs_the_solver_counted(target, reconstruct):
    model = tiny_model("llama")
    lib = library(model, 3)
    method = PuzzleMethod(PuzzleConfig(verify=0, reconstruct=reconstruct))
    plan = method.search(Inputs(model, target=target), lib)
    pruned = method.apply(Inputs(copy.deepcopy(model), calibration(), 3), plan, {})
    got, dense = from_model(pruned), from_model(model)
    a = plan.achieved
    assert count_parameters(pruned)["total"] == a["params_kept"]
    assert count_parameters(model)["total"] == a["params_dense"]
    assert cost.kv_cache_bytes_per_token(got, 4) == a["kv_cache_kept"]
    assert cost.flops_per_token(got) == a["flops_kept"]
    assert cost.kv_cache_bytes_per_token(dense, 4) == a["kv_cache_dense"]
    if target.params_ratio is not None:
        base = count_parameters(model)[target.ratio_of]
        assert a["params_dense"] - a["params_kept"] >= round(target.params_ratio * base)
    for kind, ratio in (("kv_cache", target.kv_cache_ratio), ("flops", target.flops_ratio)):
        if ratio is not None:
            assert a[f"{kind}_kept"] <= a[f"{kind}_dense"] - round(ratio * a[f"{kind}_dense"])
    assert plan.layers, "the budget removes something"


@pytest.mark.parametrize("reconstruct", ["none", "bias", "least_squares"])
def test_verified_perplexity_equals_the_applied_plan(reconstruct):
    model = tiny_model("llama")
    tokens = calibration()
    lib = library(model, 4)
    config = PuzzleConfig(reconstruct=reconstruct)
    costs = variant_costs(from_model(model), lib["mlp.channels"].numpy(), 4)
    choice = solve(*scores_of(lib), costs, {"params": int(costs.dense["params"] * 0.85)})
    plan = choice_plan(choice, lib, [2] * 4)
    inputs = Inputs(model, tokens, batch_size=4)
    stats = collect_statistics(inputs.layers) if reconstruct == "bias" else {}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = verify.calibration_perplexity(config, inputs, plan, stats)
    for k, v in model.state_dict().items():  # the model is left as it was, hooks removed
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in model.modules())
    pruned = PuzzleMethod(config).apply(Inputs(copy.deepcopy(model), tokens, batch_size=4),
                                        plan, stats)
    expected = perplexity(pruned, tokens.reshape(-1), tokens.shape[1], 4)["perplexity"]
    dense = perplexity(model, tokens.reshape(-1), tokens.shape[1], 4)["perplexity"]
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(got - dense) > 1e-3 * dense  # the plan changed something


def test_verify_two_measures_each_candidate_as_the_sliced_model_and_keeps_the_lowest():
    """``verify: 2`` runs the candidates unit by unit on the block-unit runner: each one's
    ``calibration_ppl`` is the whole-model perplexity of the model ``apply`` slices (a removed
    block included), and the plan kept is the one that perplexity picks."""
    model = tiny_model("llama")
    tokens = calibration()
    lib = library(model, 6)
    config = PuzzleConfig(verify=2, reconstruct="none")
    target = Target(params_ratio=0.45)
    plan = PuzzleMethod(config).search(Inputs(model, tokens, 4, target), lib)
    costs = variant_costs(from_model(model), lib["mlp.channels"].numpy(), 4, biases=False)
    found = candidates(*scores_of(lib), costs, {"params": plan.achieved["budgets"]["params"]},
                       2, config.diversity)
    sliced = {}
    for choice in found:
        pruned = PuzzleMethod(config).apply(Inputs(copy.deepcopy(model), tokens, batch_size=4),
                                            choice_plan(choice, lib, [2] * 4), {})
        sliced[choice.key] = perplexity(pruned, tokens.reshape(-1), tokens.shape[1],
                                        4)["perplexity"]
    assert any(not lp.attention or not lp.mlp for c in found
               for lp in choice_plan(c, lib, [2] * 4).layers.values())  # a block skipped
    assert [p["choices"] for p in plan.curve] == [c.key for c in found]
    for point in plan.curve:
        assert point["calibration_ppl"] == pytest.approx(sliced[point["choices"]], rel=1e-5)
    best = min(found, key=lambda c: sliced[c.key])
    assert plan.layers == choice_plan(best, lib, [2] * 4).layers
    assert plan.achieved["calibration_ppl"] == min(p["calibration_ppl"] for p in plan.curve)


def test_killed_verification_resumes_to_the_identical_plan(tmp_path, monkeypatch):
    model = tiny_model("llama")
    tokens = calibration()
    lib = library(model, 6)
    method = PuzzleMethod(PuzzleConfig(verify=3, reconstruct="none"))
    target = Target(params_ratio=0.25)
    whole = method.search(Inputs(model, tokens, 4, target, journal=Journal(tmp_path / "a", "k")),
                          lib)
    assert len(whole.curve) == 3 and "calibration_ppl" in whole.achieved
    assert whole.achieved["calibration_ppl"] == min(p["calibration_ppl"] for p in whole.curve)

    real, calls = verify.calibration_perplexity, []

    def dies_after_one(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    journal = Journal(tmp_path / "b", "k")
    monkeypatch.setattr(verify, "calibration_perplexity", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        method.search(Inputs(model, tokens, 4, target, journal=journal), lib)
    assert len(journal.records("verify.jsonl")) == 1

    def counted(*args):
        calls.append(1)
        return real(*args)

    calls.clear()
    monkeypatch.setattr(verify, "calibration_perplexity", counted)
    resumed = method.search(Inputs(model, tokens, 4, target, journal=journal), lib)
    assert len(calls) == 2  # the recorded candidate is not measured again
    assert resumed == whole


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_mixture_of_experts_is_refused_naming_reap(family):
    from helpers import tiny_moe

    config = tiny_moe(family).config
    with pytest.raises(UserError, match="use method: reap") as error:
        PuzzleMethod(PuzzleConfig()).check(config)
    assert "\n" not in str(error.value)
    PuzzleMethod(PuzzleConfig()).check(tiny_model("qwen2").config)  # a dense model passes
