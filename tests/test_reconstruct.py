"""Least-squares reconstruction: the pure solve against ``torch.linalg.lstsq`` (plain and ridge),
and the sequential pass on a tiny model against an independent fit on activations captured from
the finished pruned model and the dense model with ordinary forward hooks."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.width.least_squares import augmented, solve_kept
from prunectl.methods.width.moments import SecondMoments
from prunectl.methods.width.reconstruct import full_weight, least_squares_solutions
from prunectl.methods.width.sequential import Solution, sequential_pass
from prunectl.methods.width.units import removed_channels
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import Layers


def _data(n=400, d=12, out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.3  # correlated, non-centred
    x_target = x + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    b = torch.randn(out, generator=g, dtype=torch.float64)
    return x, x_target, w, b


@pytest.mark.parametrize("cross", [False, True])
def test_solve_equals_lstsq(cross):
    x, x_target, w, b = _data()
    if not cross:
        x_target = x
    kept = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    moments = SecondMoments(x.shape[1], cross)
    for chunk in range(0, x.shape[0], 64):  # streamed in batches
        moments.update(x[chunk:chunk + 64], x_target[chunk:chunk + 64] if cross else None)
    solved = solve_kept(augmented(w, b), moments.h, moments.g, kept, damp=0.0)
    design = torch.cat([x[:, kept], torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    expected = torch.linalg.lstsq(design, x_target @ w.T + b).solution.T
    torch.testing.assert_close(solved, expected, rtol=1e-8, atol=1e-8)


def test_damping_is_ridge_toward_the_dense_weights_not_on_the_bias():
    x, _, w, b = _data(seed=1)
    kept = torch.tensor([1, 2, 4, 6, 9])
    moments = SecondMoments(x.shape[1], False)
    moments.update(x)
    damp = 0.05
    solved = solve_kept(augmented(w, b), moments.h, moments.g, kept, damp=damp)
    n = x.shape[0]
    lam = damp * float((x * x).sum(0).mean()) / n  # damp x mean diagonal of E[x x^T]
    design = torch.cat([x[:, kept], torch.ones(n, 1, dtype=x.dtype)], dim=1)
    penalty = torch.zeros(len(kept), len(kept) + 1, dtype=x.dtype)
    penalty[:, :-1] = torch.eye(len(kept), dtype=x.dtype) * (lam * n) ** 0.5
    stacked = torch.cat([design, penalty])
    anchor = w[:, kept].T * (lam * n) ** 0.5  # the penalty pulls W'_K toward W_K
    targets = torch.cat([x @ w.T + b, anchor])
    expected = torch.linalg.lstsq(stacked, targets).solution.T
    torch.testing.assert_close(solved, expected, rtol=1e-8, atol=1e-8)


def test_singular_covariance_is_a_user_error():
    x = torch.zeros(50, 4, dtype=torch.float64)  # channel never varies
    moments = SecondMoments(4, False)
    moments.update(x)
    with pytest.raises(UserError, match="reconstruct_damp"):
        solve_kept(augmented(torch.ones(2, 4), None), moments.h, moments.g,
                   torch.tensor([0, 1]), damp=0.0)


def test_float32_batch_products_match_float64_moments_on_realistic_activations():
    """Float32 activations like an MLP's inputs (scales over four decades, a non-zero mean, a
    few outlier channels): H and G streamed batch by batch equal the all-float64 sums."""
    g = torch.Generator().manual_seed(5)
    d, batch, batches = 384, 2048, 8
    scale = torch.exp(torch.randn(d, generator=g, dtype=torch.float64) * 1.5)
    scale[:3] *= 100  # outlier channels
    mix = torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, generator=g,
                                                                dtype=torch.float64)
    xs = [((torch.randn(batch, d, generator=g, dtype=torch.float64) @ mix + 0.2) * scale).float()
          for _ in range(batches)]
    targets = [(x.double() * 1.01 + 0.01).float() for x in xs]
    moments = SecondMoments(d, cross=True)
    for x, t in zip(xs, targets, strict=True):
        moments.update(x, t)
    ones = torch.ones(batch * batches, 1, dtype=torch.float64)
    xa = torch.cat([torch.cat(xs).double(), ones], 1)
    ta = torch.cat([torch.cat(targets).double(), ones], 1)
    for got, want in ((moments.h, xa.T @ xa / len(xa)), (moments.g, ta.T @ xa / len(xa))):
        assert got.dtype == torch.float64
        error = float((got - want).norm() / want.norm())
        assert error < 1e-6, error
        diag = ((got.diagonal() - want.diagonal()).abs() / want.diagonal()).max()
        assert diag < 1e-5, diag


# --- the sequential pass on a tiny Llama --------------------------------------------------------

PLAN = Plan(method="flap", layers={
    0: LayerPlan(q_heads=[0, 1], kv_heads=[0], mlp_channels=list(range(0, 96, 2))),
    1: LayerPlan(mlp_channels=list(range(60))),
    2: LayerPlan(q_heads=[2, 3], kv_heads=[1]),
})


def _capture(model, tokens):
    """Inputs and outputs of every o_proj / down_proj on a plain forward (ordinary hooks)."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for name, linear in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
            def hook(_m, args, out, key=f"layers.{i}.{name}"):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                seen.setdefault(key, []).append((x, out.reshape(-1, out.shape[-1]).double()))
            handles.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        for chunk in tokens.split(4):
            model(chunk)
    for h in handles:
        h.remove()
    return {k: (torch.cat([a for a, _ in v]), torch.cat([o for _, o in v])) for k, v in seen.items()}


def _pruned(dense, tokens, reconstruct, **extra):
    method = create_method(parse_method_config({"name": "flap", "reconstruct": reconstruct,
                                                **extra}))
    stats = create_method(parse_method_config({"name": "flap"})).statistics(
        Inputs(copy.deepcopy(dense), tokens, batch_size=4))
    return method.apply(Inputs(copy.deepcopy(dense), tokens, batch_size=4), PLAN, stats).eval()


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # Gemma: sandwich norms, soft caps
def test_sequential_least_squares_is_the_optimum_and_beats_bias(family):
    dense = tiny_model(family, seed=3)
    tokens = torch.randint(4, 260, (12, 32), generator=torch.Generator().manual_seed(0))
    ls = _pruned(dense, tokens, "least_squares", reconstruct_damp=0.0, reconstruct_target="dense")
    biased = _pruned(dense, tokens, "bias")
    dense_io, ls_io, bias_io = (_capture(m, tokens) for m in (dense, ls, biased))
    checked = 0
    for i, lp in PLAN.layers.items():
        layer = ls.model.layers[i]
        for name, linear, gone in (("o_proj", layer.self_attn.o_proj, lp.q_heads is not None),
                                   ("down_proj", layer.mlp.down_proj, lp.mlp_channels is not None)):
            if not gone:
                continue
            key = f"layers.{i}.{name}"
            x_pruned, y_ls = ls_io[key]
            target = dense_io[key][1]  # the dense model's output for the same tokens
            design = torch.cat([x_pruned, torch.ones(x_pruned.shape[0], 1, dtype=torch.float64)], 1)
            fit = torch.linalg.lstsq(design, target).solution.T
            got = torch.cat([linear.weight.double(), linear.bias.double()[:, None]], 1)
            torch.testing.assert_close(got, fit, rtol=2e-3, atol=2e-3)
            ls_err = (y_ls - target).pow(2).sum()
            optimum = (design @ fit.T - target).pow(2).sum()
            torch.testing.assert_close(ls_err, optimum, rtol=1e-3, atol=1e-6)
            if key == "layers.0.o_proj":  # identical inputs in both models: bias can only lose
                bias_err = (bias_io[key][1] - target).pow(2).sum()
                assert ls_err <= bias_err * (1 + 1e-6), (key, ls_err, bias_err)
                assert ls_err < bias_err
            checked += 1
    assert checked == 4


def test_a_removed_block_passes_nothing_on_to_the_layers_after_it():
    """The pass emulates a removed attention block as zero output (the sliced model has no block
    and no bias there), so the next layer's refit equals ``lstsq`` on the pruned model's inputs."""
    dense = tiny_model("llama", seed=3)
    tokens = torch.randint(4, 260, (12, 32), generator=torch.Generator().manual_seed(0))
    plan = Plan(method="flap", layers={0: LayerPlan(attention=False),
                                       1: LayerPlan(mlp_channels=list(range(60)))})
    method = create_method(parse_method_config({"name": "flap", "reconstruct": "least_squares",
                                                "reconstruct_damp": 0.0,
                                                "reconstruct_target": "dense"}))
    pruned = method.apply(Inputs(copy.deepcopy(dense), tokens, batch_size=4), plan, {}).eval()
    assert Adapter(pruned).attention(0) is None
    down = Adapter(pruned).down_proj(1)
    seen = []
    handle = down.register_forward_hook(lambda _m, args, _out: seen.append(
        args[0].reshape(-1, args[0].shape[-1]).double()))
    target = []
    dense_handle = dense.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda _m, _args, out: target.append(out.reshape(-1, out.shape[-1]).double()))
    with torch.no_grad():
        for chunk in tokens.split(4):
            pruned(chunk)
            dense(chunk)
    handle.remove()
    dense_handle.remove()
    x = torch.cat(seen)
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    fit = torch.linalg.lstsq(design, torch.cat(target)).solution.T
    got = torch.cat([down.weight.double(), down.bias.double()[:, None]], 1)
    torch.testing.assert_close(got, fit, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("target", ["dense", "self"])
def test_only_the_wanted_projections_are_recorded_and_their_solutions_are_unchanged(target):
    """``wanted`` skips the projections the plan leaves alone: ``solve`` never sees them, and the
    others' solutions equal those of a pass that records everything."""
    dense = tiny_model("llama", seed=3)
    tokens = torch.randint(4, 260, (8, 32), generator=torch.Generator().manual_seed(1))
    adapter = Adapter(dense)

    def solver(calls):
        def solve(i, name, weight, moments):
            calls.append(f"layers.{i}.{name}")
            removed = removed_channels(adapter, PLAN, i, name)
            if not removed:
                return None
            n = weight.shape[1] - 1
            kept = torch.tensor([c for c in range(n) if c not in set(removed)])
            return Solution(removed, full_weight(
                solve_kept(weight, moments.h, moments.g, kept, 0.01), kept, n))
        return solve

    every, some = [], []
    full = sequential_pass(Layers(adapter, tokens, 4), solver(every), target)
    pruned = ["layers.0.o_proj", "layers.0.down_proj", "layers.1.down_proj", "layers.2.o_proj"]
    assert sorted(full) == sorted(pruned)
    assert len(every) == 2 * adapter.num_layers
    only = sequential_pass(Layers(adapter, tokens, 4), solver(some), target, wanted=set(pruned))
    assert some == pruned  # in pass order, nothing else
    for key in pruned:
        assert only[key].removed == full[key].removed
        torch.testing.assert_close(only[key].weight, full[key].weight, rtol=0, atol=0)
    solved = least_squares_solutions(Layers(adapter, tokens, 4), PLAN, target, 0.01)
    assert sorted(solved) == sorted(pruned)
    for key in pruned:
        torch.testing.assert_close(solved[key].weight, full[key].weight, rtol=0, atol=0)


@pytest.mark.parametrize("target", ["dense", "self"])  # dense: two streams to checkpoint
def test_an_interrupted_refit_resumes_per_layer_to_identical_solutions(target, tmp_path,
                                                                       monkeypatch):
    """Stopped between two blocks (after layer 1's attention, which the plan leaves alone), the
    pass restarts at layer 1's MLP (only the projections from there are solved) and ends with
    the uninterrupted solutions bit for bit; the finished pass deletes its folder.  The
    uninterrupted pass shows a bar and, after its first layer, one line estimating the rest."""
    import io

    from rich.console import Console

    from prunectl import ui as ui_module
    from prunectl.methods.inputs import Journal
    from prunectl.methods.width import reconstruct
    from prunectl.pipelines.layers import LayerCheckpoint

    dense = tiny_model("llama", seed=3)
    tokens = torch.randint(4, 260, (8, 32), generator=torch.Generator().manual_seed(1))
    adapter = Adapter(dense)
    shown = ui_module.UI(quiet=False)
    shown.err = Console(file=io.StringIO(), force_terminal=True, width=200)
    straight = least_squares_solutions(Layers(adapter, tokens, 4), PLAN, target, 0.01, ui=shown)
    text = shown.err.file.getvalue()
    assert "least-squares refit" in text and "%" in text  # the bar
    # one of the tiny model's 4 layers
    assert "estimated from the first 2 blocks (" in text and "25% of the work" in text
    journal = Journal(tmp_path, "apply-key")
    real_save, real_solve, solved = LayerCheckpoint.save, reconstruct.solve_kept, []

    def stop_after_layer_1(self, done, stats, layer_pass):
        real_save(self, done, stats, layer_pass)
        if done == 3:  # blocks: layer 0's two and layer 1's attention
            raise KeyboardInterrupt

    def counted(weight, h, g, kept, damp, what=""):
        solved.append(what)
        return real_solve(weight, h, g, kept, damp, what)

    monkeypatch.setattr(reconstruct, "solve_kept", counted)
    monkeypatch.setattr(LayerCheckpoint, "save", stop_after_layer_1)
    with pytest.raises(KeyboardInterrupt):
        least_squares_solutions(Layers(adapter, tokens, 4), PLAN, target, 0.01, journal=journal)
    assert (tmp_path / "layers" / "solutions-2.safetensors").exists()
    monkeypatch.setattr(LayerCheckpoint, "save", real_save)
    solved.clear()
    resumed = least_squares_solutions(Layers(adapter, tokens, 4), PLAN, target, 0.01,
                                      journal=journal)
    assert solved == ["layers.1.down_proj", "layers.2.o_proj"]
    assert sorted(resumed) == sorted(straight)
    for key, solution in straight.items():
        assert resumed[key].removed == solution.removed
        assert torch.equal(resumed[key].weight, solution.weight)
    assert not (tmp_path / "layers").exists()
