"""SlimGPT: OBS errors against refits with ``torch.linalg.lstsq``, the greedy choice, the final
weights against the least-squares reconstruction ``apply`` uses, allocation and the method end to
end on a tiny GQA model."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.slimgpt.allocation import shape_weights
from prunectl.methods.width.least_squares import augmented, solve_kept
from prunectl.methods.width.moments import SecondMoments
from prunectl.methods.width.obs import greedy_prune, mlp_batches
from prunectl.modeling.params import count_parameters


def _problem(seed=0, n=500, d=12, out=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
        d, d, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    b = torch.randn(out, generator=g, dtype=torch.float64)
    moments = SecondMoments(d, False)
    moments.update(x)
    return x, w, b, moments.h


def _refit_error(x, w, b, gone: set[int]) -> float:
    """Mean squared output error of the best refit (kept columns + bias) without ``gone``."""
    kept = [c for c in range(x.shape[1]) if c not in gone]
    design = torch.cat([x[:, kept], torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    y = x @ w.T + b
    fit = torch.linalg.lstsq(design, y).solution
    return float((design @ fit - y).pow(2).sum() / x.shape[0])


def test_obs_error_of_a_removed_head_is_the_increase_of_the_output_error():
    x, w, b, h = _problem()
    groups = torch.arange(12).reshape(4, 3)  # four "heads" of three columns
    result = greedy_prune(augmented(w, b), h, groups, count=2, damp=0.0)
    first, second = result.removed
    base = _refit_error(x, w, b, set())
    after_first = _refit_error(x, w, b, set(groups[first].tolist()))
    after_both = _refit_error(x, w, b, set(groups[[first, second]].reshape(-1).tolist()))
    assert base < 1e-20
    assert result.errors[0] == pytest.approx(after_first, rel=1e-8)
    assert result.errors[1] == pytest.approx(after_both - after_first, rel=1e-8)
    for other in range(4):  # the greedy step took the cheapest head
        assert after_first <= _refit_error(x, w, b, set(groups[other].tolist())) * (1 + 1e-10)


def test_single_column_errors_and_batched_updates_match_refits():
    x, w, b, h = _problem(seed=2)
    groups = torch.arange(12).reshape(-1, 1)
    result = greedy_prune(augmented(w, b), h, groups, count=5, batches=[3, 2], damp=0.0)
    single = _refit_error(x, w, b, {result.removed[0]})
    assert result.errors[0] == pytest.approx(single, rel=1e-8)
    # the compensated weights are the refit on what is left: OBS steps compose into least squares
    kept = torch.tensor([c for c in range(12) if c not in set(result.removed)])
    refit = solve_kept(augmented(w, b), h, h, kept, damp=0.0)
    torch.testing.assert_close(result.weight[:, kept], refit[:, :-1], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(result.weight[:, -1], refit[:, -1], rtol=1e-8, atol=1e-8)
    assert result.weight[:, sorted(result.removed)].abs().max() < 1e-12


def test_damped_weights_equal_the_damped_reconstruction():
    _, w, b, h = _problem(seed=3)
    groups = torch.arange(12).reshape(4, 3)
    result = greedy_prune(augmented(w, b), h, groups, count=2, damp=0.1)
    kept = torch.tensor([c for c in range(12) if c // 3 not in set(result.removed)])
    refit = solve_kept(augmented(w, b), h, h, kept, damp=0.1)
    torch.testing.assert_close(result.weight[:, kept], refit[:, :-1], rtol=1e-8, atol=1e-9)


def test_batch_schedule_and_ipr_shape():
    # Llama-7B at 20%: (2202 - 512) // 2 = 845, then (845 - 512) // 2 = 166, then the 64 floor
    assert mlp_batches(2202) == [845, 166] + [64] * 18 + [39]
    assert mlp_batches(40) == [40]
    weights = shape_weights("ipr", 32, 0.2)  # the reference: 0.06 ... 0.3 over Llama-7B's 32
    assert weights[0] == pytest.approx(0.2) and weights[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(weights, weights[1:]))
    assert [0.3 * v for v in weights][:2] == pytest.approx([0.06, 0.06 + 0.24 * 0.2])
    assert shape_weights("uniform", 4, 0.2) == [1.0] * 4


@pytest.mark.parametrize(("allocation", "family"), [("ipr", "llama"), ("uniform", "llama"),
                                                    ("AL-AM", "llama"), ("ipr", "gemma2")])
def test_slimgpt_prunes_to_the_target_on_a_gqa_model(allocation, family):
    dense = tiny_model(family, seed=3, num_attention_heads=8, num_key_value_heads=4)
    tokens = torch.randint(4, 260, (12, 32), generator=torch.Generator().manual_seed(0))
    inputs = Inputs(dense, tokens, batch_size=4, target=Target(params_ratio=0.25))
    method = create_method(parse_method_config({"name": "slimgpt", "allocation": allocation}))
    stats = method.statistics(inputs)
    plan = method.search(inputs, method.score(inputs, stats))
    before = count_parameters(dense)["total"]
    pruned = method.apply(inputs, plan, stats)
    removed = before - count_parameters(pruned)["total"]
    assert removed == plan.achieved["params_removed"]
    assert abs(removed / before - 0.25) < 0.03
    for lp in plan.layers.values():  # whole KV groups: 2 query heads per kept KV head
        if lp.q_heads is not None:
            assert len(lp.q_heads) == 2 * len(lp.kv_heads)
    if allocation == "ipr":
        ratios = plan.achieved["layer_ratios"]
        assert all(a < b for a, b in zip(ratios, ratios[1:]))


def test_an_interrupted_search_resumes_per_layer_to_the_same_plan(tmp_path, monkeypatch):
    from prunectl.methods.inputs import Journal
    from prunectl.pipelines.layers import LayerCheckpoint

    dense = tiny_model("llama", seed=3, num_attention_heads=8, num_key_value_heads=4)
    tokens = torch.randint(4, 260, (12, 32), generator=torch.Generator().manual_seed(0))
    method = create_method(parse_method_config({"name": "slimgpt"}))

    def search(journal=Journal()):
        inputs = Inputs(dense, tokens, batch_size=4, target=Target(params_ratio=0.25),
                        journal=journal)
        return method.search(inputs, {})

    straight = search()
    real_save = LayerCheckpoint.save

    def stop_after_layer_0(self, done, stats, layer_pass):
        real_save(self, done, stats, layer_pass)
        raise KeyboardInterrupt

    monkeypatch.setattr(LayerCheckpoint, "save", stop_after_layer_0)
    with pytest.raises(KeyboardInterrupt):
        search(Journal(tmp_path, "k"))
    monkeypatch.setattr(LayerCheckpoint, "save", real_save)
    assert (tmp_path / "layers" / "solutions-0.safetensors").exists()
    assert search(Journal(tmp_path, "k")) == straight
    assert not (tmp_path / "layers").exists()
