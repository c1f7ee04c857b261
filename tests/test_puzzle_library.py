"""The puzzle library (``method: puzzle``'s ``score`` step): every score, order and tensor checked
against an independent computation on a tiny GQA Llama (3 layers, 4 heads / 2 KV heads)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Journal
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.puzzle import library
from prunectl.methods.puzzle.config import PuzzleConfig
from prunectl.methods.puzzle.importance import magnitude_scores, unit_columns
from prunectl.methods.puzzle.library import build_library
from prunectl.methods.puzzle.variants import attention_kept, mlp_kept
from prunectl.methods.width.least_squares import augmented, damped, solve_kept
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.surgery import apply_plan

LAYERS, HEADS, KV, HEAD_DIM, CHANNELS = 3, 4, 2, 16, 96
# MLP variants keep 0, 32, 48, 96 channels: 24 snaps to 32, the default alignment of 96 channels
# being 16 (modeling.alignment)
WIDTHS = [0.25, 0.5]
ALL = {"score_windows": None}  # the checks below score on every window (the default: first 4)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(7)
    return torch.randint(3, 260, (6, 20))


@pytest.fixture(scope="module")
def built(model, tokens):
    """``built(**config)``: the library for that config, built once per module."""
    done = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in done:
            config = PuzzleConfig(mlp_widths=WIDTHS, **(ALL | options))
            done[key] = build_library(Inputs(model, tokens, batch_size=4), config)
        return done[key]

    return get


@pytest.fixture(scope="module")
def dense_inputs(model, tokens):
    """Every o_proj / down_proj input of the dense model, float64 [tokens, n], from one forward."""
    found, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for name, linear in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
            def hook(_m, args, key=(i, name)):
                found[key] = args[0].reshape(-1, args[0].shape[-1]).double()
            handles.append(linear.register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(tokens)
    for handle in handles:
        handle.remove()
    return found


def group_channels(group: int) -> list[int]:
    """o_proj input channels of KV group ``group``: its query heads' (HF repeats KV heads)."""
    per = HEADS // KV
    return [h * HEAD_DIM + d for h in range(group * per, (group + 1) * per) for d in range(HEAD_DIM)]


def moments(x: torch.Tensor) -> torch.Tensor:
    xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    return xa.T @ xa / x.shape[0]


def solved(model, dense_inputs, i, block, kept, how, damp):
    """The variant's kept weight columns and bias, by hand: least squares on the collected
    inputs, the removed channels' mean in the bias, or plain slicing."""
    name = "o_proj" if block == "attn" else "down_proj"
    layer = model.model.layers[i]
    linear = layer.self_attn.o_proj if block == "attn" else layer.mlp.down_proj
    x = dense_inputs[(i, name)]
    w = linear.weight.detach().double()
    keep = torch.tensor(kept)
    if how == "least_squares":
        out = solve_kept(augmented(linear.weight, None), moments(x), moments(x), keep, damp)
        return out[:, :-1], out[:, -1]
    gone = torch.tensor([c for c in range(w.shape[1]) if c not in set(kept)])
    bias = w[:, gone] @ x[:, gone].mean(0) if how == "bias" else torch.zeros(w.shape[0]).double()
    return w[:, keep], bias


def kept_units(lib, i, block, k):
    order = lib[f"{block}.order"][i, :k].tolist()
    if block == "mlp":
        return sorted(order)
    return sorted(c for g in order for c in group_channels(g))


def sliced(model, i, block, kept_groups_or_channels, weights):
    """The variant sliced in physically and its solved weights copied in."""
    if block == "attn":
        groups = sorted(kept_groups_or_channels)
        per = HEADS // KV
        lp = (LayerPlan(attention=False) if not groups else
              LayerPlan(q_heads=[h for g in groups for h in range(g * per, (g + 1) * per)],
                        kv_heads=groups))
    else:
        lp = (LayerPlan(mlp=False) if not kept_groups_or_channels else
              LayerPlan(mlp_channels=sorted(kept_groups_or_channels)))
    name = "o_proj" if block == "attn" else "down_proj"
    biases = None if weights is None else {f"layers.{i}.{name}": weights[1].float()}
    pruned = apply_plan(copy.deepcopy(model), Plan(method="t", layers={i: lp}), biases)
    if weights is not None:
        layer = pruned.model.layers[i]
        linear = layer.self_attn.o_proj if block == "attn" else layer.mlp.down_proj
        with torch.no_grad():
            linear.weight.copy_(weights[0].float())
    return pruned


def kl_by_hand(dense, pruned, tokens) -> float:
    with torch.inference_mode():
        logp = F.log_softmax(dense(tokens).logits[:, :-1].float(), -1).double()
        logq = F.log_softmax(pruned(tokens).logits[:, :-1].float(), -1).double()
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


@pytest.mark.parametrize("how", ["least_squares", "bias", "none"])
def test_kl_scores_equal_the_sliced_model_against_the_dense_one(model, tokens, built,
                                                                dense_inputs, how):
    lib = built(importance="flap", score="kl", reconstruct=how)
    damp = PuzzleConfig().reconstruct_damp
    cases = [(1, "attn", 1, 1), (0, "attn", 0, 0), (1, "mlp", 2, 48), (2, "mlp", 1, 32),
             (2, "mlp", 0, 0)]
    for i, block, column, k in cases:
        if block == "attn":
            units = lib["attn.order"][i, :k].tolist()
        else:
            assert int(lib["mlp.channels"][i, column]) == k
            units = kept_units(lib, i, block, k)
        weights = None if k == 0 else solved(model, dense_inputs, i, block,
                                             kept_units(lib, i, block, k), how, damp)
        pruned = sliced(model, i, block, units, weights)
        expected = kl_by_hand(model, pruned, tokens)
        got = float(lib[f"{block}.score"][i, column])
        assert expected > 0
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-7), (i, block, k)


def test_local_scores_equal_the_block_output_error_and_least_squares_never_loses(
        model, built, dense_inputs):
    damp = PuzzleConfig().reconstruct_damp
    libs = {how: built(importance="flap", score="local", reconstruct=how)
            for how in ("least_squares", "none")}
    for how, lib in libs.items():
        for i, block, column, k in [(0, "attn", 1, 1), (2, "attn", 0, 0), (1, "mlp", 1, 32),
                                    (0, "mlp", 2, 48)]:
            name = "o_proj" if block == "attn" else "down_proj"
            layer = model.model.layers[i]
            linear = layer.self_attn.o_proj if block == "attn" else layer.mlp.down_proj
            x = dense_inputs[(i, name)]
            dense_out = x @ linear.weight.detach().double().T
            kept = kept_units(lib, i, block, k)
            if k == 0:
                out = torch.zeros_like(dense_out)
            else:
                w, b = solved(model, dense_inputs, i, block, kept, how, damp)
                out = x[:, kept] @ w.float().double().T + b.float().double()
            expected = float((out - dense_out).pow(2).sum(1).mean())
            assert float(lib[f"{block}.score"][i, column]) == pytest.approx(expected, rel=1e-4)
    for block in ("attn", "mlp"):
        ls, none = libs["least_squares"][f"{block}.score"], libs["none"][f"{block}.score"]
        assert torch.equal(libs["least_squares"][f"{block}.order"], libs["none"][f"{block}.order"])
        assert (ls <= none * (1 + 1e-6) + 1e-12).all()
        assert (ls[:, 1:-1] < none[:, 1:-1]).all()  # partial variants gain from the refit
        assert torch.equal(ls[:, 0], none[:, 0])  # removed blocks: nothing to refit


def test_flap_and_magnitude_orders_equal_hand_computations(model, built, dense_inputs):
    flap, magnitude = built(importance="flap", score="local"), built(importance="magnitude",
                                                                      score="local")
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for name, linear, block in (("o_proj", attn.o_proj, "attn"),
                                    ("down_proj", mlp.down_proj, "mlp")):
            x = dense_inputs[(i, name)]
            metric = x.var(0, unbiased=False) * linear.weight.detach().double().pow(2).sum(0)
            if block == "attn":
                metric = torch.stack([metric[group_channels(g)].sum() for g in range(KV)])
            expected = sorted(range(len(metric)), key=lambda u: -float(metric[u]))
            assert flap[f"{block}.order"][i].tolist() == expected, (i, block)

        def sq(w):
            return w.detach().double().pow(2)

        attn_norm = [float((sq(attn.o_proj.weight)[:, group_channels(g)].sum()
                            + sq(attn.q_proj.weight)[group_channels(g)].sum()
                            + sq(attn.k_proj.weight)[g * HEAD_DIM:(g + 1) * HEAD_DIM].sum()
                            + sq(attn.v_proj.weight)[g * HEAD_DIM:(g + 1) * HEAD_DIM].sum()).sqrt())
                     for g in range(KV)]
        mlp_norm = (sq(mlp.down_proj.weight).sum(0) + sq(mlp.gate_proj.weight).sum(1)
                    + sq(mlp.up_proj.weight).sum(1)).sqrt()
        adapter = Adapter(model)
        assert torch.allclose(magnitude_scores(adapter, i, "attn", unit_columns(adapter, i, "attn")),
                              torch.tensor(attn_norm, dtype=torch.float64))
        assert torch.allclose(magnitude_scores(adapter, i, "mlp", unit_columns(adapter, i, "mlp")),
                              mlp_norm)
        assert magnitude["attn.order"][i].tolist() == sorted(range(KV), key=lambda g: -attn_norm[g])
        assert magnitude["mlp.order"][i].tolist() == sorted(range(CHANNELS),
                                                            key=lambda c: -float(mlp_norm[c]))


def test_slimgpt_order_ends_with_the_unit_of_least_obs_error(model, built, dense_inputs):
    """The first unit SlimGPT removes (least OBS error ``w^T Hinv_SS^-1 w`` on the damped H)
    is the least important one."""
    lib = built(importance="slimgpt", score="local")
    damp = PuzzleConfig().reconstruct_damp
    for i, layer in enumerate(model.model.layers):
        for name, linear, block, groups in (
                ("o_proj", layer.self_attn.o_proj, "attn", [group_channels(g) for g in range(KV)]),
                ("down_proj", layer.mlp.down_proj, "mlp", [[c] for c in range(CHANNELS)])):
            hinv = torch.linalg.inv(damped(moments(dense_inputs[(i, name)]), damp))
            w = augmented(linear.weight, None)
            errors = [float(torch.trace(w[:, s] @ torch.linalg.inv(hinv[s][:, s]) @ w[:, s].T))
                      for s in groups]
            order = lib[f"{block}.order"][i]
            assert sorted(order.tolist()) == list(range(len(groups)))
            assert int(order[-1]) == min(range(len(groups)), key=errors.__getitem__), (i, block)


def test_library_format(built):
    lib = built(importance="magnitude", score="kl", reconstruct="bias")
    widths = mlp_kept(CHANNELS, WIDTHS, 16)
    assert widths == [0, 32, 48, 96] and attention_kept(KV) == [0, 1, 2]
    expected = {"attn.order": ((LAYERS, KV), torch.int64),
                "attn.score": ((LAYERS, KV + 1), torch.float64),
                "mlp.order": ((LAYERS, CHANNELS), torch.int64),
                "mlp.channels": ((LAYERS, len(widths)), torch.int64),
                "mlp.score": ((LAYERS, len(widths)), torch.float64)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in lib.items()} == expected
    assert lib["mlp.channels"].tolist() == [widths] * LAYERS
    assert (lib["attn.score"][:, -1] == 0).all() and (lib["mlp.score"][:, -1] == 0).all()
    assert (lib["attn.score"][:, :-1] > 0).all() and (lib["mlp.score"][:, :-1] > 0).all()
    for i in range(LAYERS):
        assert sorted(lib["attn.order"][i].tolist()) == list(range(KV))
        assert sorted(lib["mlp.order"][i].tolist()) == list(range(CHANNELS))


def test_mlp_widths_round_and_deduplicate():
    assert mlp_kept(3, [0.1, 0.2, 0.5]) == [0, 1, 2, 3]  # round(0.3) = 0 is "remove" again
    assert mlp_kept(8, [k / 8 for k in range(1, 8)]) == list(range(9))


def test_an_interrupted_build_resumes_to_the_uninterrupted_library(model, tokens, built,
                                                                   tmp_path, monkeypatch):
    options = dict(importance="slimgpt", score="kl", reconstruct="least_squares")
    config = PuzzleConfig(mlp_widths=WIDTHS, **ALL, **options)
    straight = built(**options)
    real, calls = library._score, []

    def counted(*args, **kwargs):
        calls.append(args[2])
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(library, "_score", counted)
    journal = Journal(tmp_path, "mine")
    stop_after = 7  # three layers hold 3 * (2 + 3) variants to run
    with pytest.raises(KeyboardInterrupt):
        build_library(Inputs(model, tokens, batch_size=4, journal=journal), config)
    records = journal.records()
    assert sum("score" in r for r in records) == 7 and all(r["key"] == "mine" for r in records)

    stop_after, calls[:] = None, []
    resumed = build_library(Inputs(model, tokens, batch_size=4, journal=journal), config)
    assert len(calls) == 15 - 7
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)

    # a journal made for other inputs: its (bogus) records are ignored, everything is rescored
    journal.append({"key": "other", "layer": 0, "block": "attn", "kept": 0, "score": 123.0})
    calls[:] = []
    foreign = build_library(Inputs(model, tokens, batch_size=4, journal=Journal(tmp_path, "other")),
                            config)
    assert len(calls) == 15 - 1
    assert float(foreign["attn.score"][0, 0]) == 123.0  # its own key's record was used
    calls[:] = []
    fresh = build_library(Inputs(model, tokens, batch_size=4, journal=Journal(tmp_path, "new")),
                          config)
    assert len(calls) == 15
    assert all(torch.equal(fresh[k], straight[k]) for k in straight)


def test_refuses_a_non_uniform_model_and_missing_tokens(model, tokens):

    narrower = apply_plan(copy.deepcopy(model),
                          Plan(method="t", layers={1: LayerPlan(mlp_channels=list(range(48)))}))
    with pytest.raises(UserError, match="same attention and MLP widths"):
        build_library(Inputs(narrower, tokens), PuzzleConfig())
    with pytest.raises(UserError, match="calibrate"):
        build_library(Inputs(model), PuzzleConfig())


def test_least_squares_on_few_tokens_warns(model, tokens, capsys):
    from prunectl.ui import UI

    config = PuzzleConfig(mlp_widths=[0.5], score="local")
    build_library(Inputs(model, tokens, batch_size=4, ui=UI(quiet=False)), config)
    assert "will overfit" in " ".join(capsys.readouterr().err.split())


def test_score_windows_score_on_the_first_windows_with_statistics_from_all(model, tokens, built):
    """Scores run on the first ``score_windows`` windows; orders and refits still use all of
    them.  With token-free orders and no refit (magnitude, none) that is exactly the library of
    the first windows alone; with flap's orders, the orders are those of every window."""
    config = PuzzleConfig(mlp_widths=WIDTHS, importance="magnitude", reconstruct="none",
                          score_windows=2)
    subset = build_library(Inputs(model, tokens, batch_size=4), config)
    alone = build_library(Inputs(model, tokens[:2], batch_size=4),
                          config.model_copy(update={"score_windows": None}))
    for name in alone:
        assert torch.equal(subset[name], alone[name]), name
    flap = build_library(Inputs(model, tokens, batch_size=4),
                         PuzzleConfig(mlp_widths=WIDTHS, score_windows=2))
    full = built()
    assert torch.equal(flap["attn.order"], full["attn.order"])
    assert torch.equal(flap["mlp.order"], full["mlp.order"])
    assert not torch.equal(flap["mlp.score"], full["mlp.score"])
    with pytest.raises(UserError, match="score_windows=7 exceeds the 6 calibration windows"):
        build_library(Inputs(model, tokens, batch_size=4),
                      PuzzleConfig(mlp_widths=WIDTHS, score_windows=7))
    # the default, 4, scores on the first 4 windows, and on all of them when there are fewer
    assert PuzzleConfig().score_windows == 4
    config = config.model_copy(update={"score_windows": 4})
    first4 = build_library(Inputs(model, tokens[:4], batch_size=4),
                           config.model_copy(update={"score_windows": None}))
    assert all(torch.equal(build_library(Inputs(model, tokens, batch_size=4), config)[name],
                           first4[name]) for name in first4)
    three = build_library(Inputs(model, tokens[:3], batch_size=4), config)
    every = build_library(Inputs(model, tokens[:3], batch_size=4),
                          config.model_copy(update={"score_windows": None}))
    assert all(torch.equal(three[name], every[name]) for name in every)


def test_dense_log_probs_are_computed_once_when_they_fit_and_recomputed_when_not(
        model, tokens, built, monkeypatch):
    """KL scores compare every variant with the same dense distribution: it is kept (one head
    forward per batch for the whole library) under ``LOG_PROBS_CACHE_BYTES`` and recomputed per
    variant above it, with the same library either way."""
    heads = []
    original = library.log_probs

    def counted(adapter, hidden, chunk_tokens):
        heads.append(hidden.data_ptr())
        return original(adapter, hidden, chunk_tokens)

    monkeypatch.setattr(library, "log_probs", counted)
    config = PuzzleConfig(mlp_widths=WIDTHS, importance="magnitude", reconstruct="none", **ALL)
    cached = build_library(Inputs(model, tokens, batch_size=4), config)
    batches, variants = 2, 2 * LAYERS + 3 * LAYERS  # attn keeps 0/1 of 2 groups; mlp 0/32/48
    assert len(heads) == variants * batches + batches
    heads.clear()
    monkeypatch.setattr(library, "LOG_PROBS_CACHE_BYTES", 0)
    recomputed = build_library(Inputs(model, tokens, batch_size=4), config)
    assert len(heads) == 2 * variants * batches
    for name in cached:
        assert torch.equal(cached[name], recomputed[name]), name


def test_the_library_shows_progress_and_one_time_estimate_and_scores_the_same(
        model, tokens, built, tmp_path, monkeypatch):
    """Each block's unit order is computed once.  After the first layer (2 attention + 3 MLP
    variants), one line estimates the rest from the work measured: a kl variant of unit u
    costs 6 - u + 1 unit forwards, so layer 0 is 32 of the 66 units; 64 s for it leave
    64 * 34 / 32 = 68 s.  A resumed build counts what its
    journal holds as done, not as measured."""
    import io

    from rich.console import Console

    from prunectl import ui as ui_module

    def captured():
        shown = ui_module.UI(quiet=False)
        shown.err = Console(file=io.StringIO(), force_terminal=True, width=200)
        return shown

    expected = built(score="kl")
    ticks = iter([0.0, 64.0])
    monkeypatch.setattr(ui_module.Meter, "clock", staticmethod(lambda: next(ticks)))
    config = PuzzleConfig(mlp_widths=WIDTHS, score="kl", **ALL)
    shown = captured()
    orders = []
    real_order = library.unit_order
    monkeypatch.setattr(library, "unit_order", lambda *a: orders.append(a[2:4]) or real_order(*a))
    lib = build_library(Inputs(model, tokens, batch_size=4, ui=shown), config)
    assert all(torch.equal(lib[k], expected[k]) for k in lib)
    # one order per block, shared by its variants
    assert orders == [(i, block) for i in range(LAYERS) for block in ("attn", "mlp")]
    text = shown.err.file.getvalue()
    assert "puzzle library" in text and "%" in text  # the bar, drawn on a terminal
    lines = [line for line in text.splitlines() if "to go" in line]
    assert len(lines) == 1
    assert ("puzzle library: about 68 s to go, estimated from the first 5 variants (64 s, 48% "
            "of the work)") in lines[0]

    real, calls = library._score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    journal = Journal(tmp_path, "k")
    ticks = iter([0.0, 1.0])
    monkeypatch.setattr(library, "_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_library(Inputs(model, tokens, batch_size=4, journal=journal), config)
    monkeypatch.setattr(library, "_score", real)
    # layer 0 (32) and 2 of layer 1's attention variants (10) are done: layer 1 measures 12
    ticks = iter([0.0, 12.0])
    shown = captured()
    resumed = build_library(Inputs(model, tokens, batch_size=4, journal=journal, ui=shown), config)
    assert all(torch.equal(resumed[k], lib[k]) for k in lib)
    assert ("puzzle library: about 12 s to go, estimated from the first 3 variants (12 s, 18% "
            "of the work)") in shown.err.file.getvalue()
