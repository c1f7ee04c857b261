"""The block search engine against an independent greedy search written here: blocks bypassed
by hooks that zero their output, perplexity from a plain ``model(...)`` forward and
``cross_entropy``, argmin by hand."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.block.search import SearchSettings, block_search
from prunectl.methods.removal_order import ParameterCounts, StopRule, candidate_names
from prunectl.pipelines.blocks.runner import Units


def tokens(seed: int = 0, windows: int = 6, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(4, 260, (windows, seqlen), generator=torch.Generator().manual_seed(seed))


def peaked_model(family: str = "llama", seed: int = 0, layers: int = 5):
    """A model whose ppl depends strongly on one block, so early stopping has work to do:
    a big embedding with the LM head tied to it predicts "the same token again" (the data
    repeats each token), and layer 1's attention is scaled up to wreck that prediction."""
    model = tiny_model(family, seed=seed, num_hidden_layers=layers)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)
        model.lm_head.weight.copy_(model.model.embed_tokens.weight * 0.15)
        model.model.layers[1].self_attn.o_proj.weight.mul_(30)
    return model


def repeated_tokens(seed: int, windows: int = 8, seqlen: int = 24) -> torch.Tensor:
    return tokens(seed, windows, seqlen // 4).repeat_interleave(4, dim=1)


def direct_ppl(model, ids: torch.Tensor, bypassed: list[str]) -> float:
    handles = []
    for name in bypassed:
        parts = name.split(".")
        layer = model.model.layers[int(parts[1])]
        if len(parts) == 2 or parts[2] == "attn":
            handles.append(layer.self_attn.register_forward_hook(
                lambda m, a, out: (torch.zeros_like(out[0]), *out[1:])))
        if len(parts) == 2 or parts[2] == "mlp":
            handles.append(layer.mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out)))
    with torch.no_grad():
        logits = model(ids).logits
    for handle in handles:
        handle.remove()
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten(), reduction="sum"
    )
    return math.exp(float(nll) / ids[:, 1:].numel())


def direct_greedy(model, ids, candidates: list[str], steps: int):
    removed, ppls, first_scores = [], [], None
    for _ in range(steps):
        scores = {c: direct_ppl(model, ids, removed + [c]) for c in candidates if c not in removed}
        first_scores = first_scores or scores
        best = min(scores, key=lambda c: (scores[c], candidates.index(c)))
        removed.append(best)
        ppls.append(scores[best])
    return removed, ppls, first_scores


def unit_params(candidates: list[str]) -> ParameterCounts:
    return ParameterCounts(total=10_000, non_embedding=8_000,
                           per_candidate={c: 100 + i for i, c in enumerate(candidates)})


def search(model, ids, block_type="mix", steps=3, batch_size=2, **settings):
    names = candidate_names(len(model.model.layers), block_type)
    return block_search(Units(model, ids, 4), names, StopRule(blocks=steps), unit_params(names),
                        SearchSettings(batch_size=batch_size, **settings))


@pytest.mark.parametrize("block_type,steps", [("mix", 4), ("mha", 3), ("mlp", 3), ("layer", 2)])
def test_greedy_order_and_perplexities_match_a_direct_search(block_type, steps):
    model, ids = tiny_model("llama", num_hidden_layers=5), tokens()
    names = candidate_names(5, block_type)
    order, ppls, first = direct_greedy(model, ids, names, steps)

    result = search(model, ids, block_type, steps, early_stop=False)

    assert [d["removed"] for d in result.decisions] == order
    assert [d["perplexity"] for d in result.decisions] == pytest.approx(ppls, rel=1e-5)
    step1 = result.decisions[0]["scores"]
    assert {c: s["ppl"] for c, s in step1.items()} == pytest.approx(first, rel=1e-5)
    assert not any(s["lower_bound"] for s in step1.values())
    assert result.decisions[0]["dense_perplexity"] == pytest.approx(
        direct_ppl(model, ids, []), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("early_stop", [True, False])
def test_fast_search_equals_naive_search(family, early_stop):
    model, ids = peaked_model(family, seed=1), repeated_tokens(1)
    naive = search(model, ids, steps=5, batch_size=1, mode="naive", early_stop=False)
    fast = search(model, ids, steps=5, batch_size=1, mode="fast", early_stop=early_stop)

    assert [d["removed"] for d in fast.decisions] == [d["removed"] for d in naive.decisions]
    assert [d["perplexity"] for d in fast.decisions] == pytest.approx(
        [d["perplexity"] for d in naive.decisions], rel=1e-5)
    assert fast.counts["attn"] + fast.counts["mlp"] < naive.counts["attn"] + naive.counts["mlp"]


def test_early_stopped_scores_are_flagged_lower_bounds_of_losers():
    model, ids = peaked_model("llama", seed=2), repeated_tokens(2)
    exact = search(model, ids, steps=3, batch_size=1, early_stop=False)
    early = search(model, ids, steps=3, batch_size=1, early_stop=True)

    flagged = 0
    for full, fast in zip(exact.decisions, early.decisions, strict=True):
        assert fast["removed"] == full["removed"]
        for name, score in fast["scores"].items():
            true = full["scores"][name]["ppl"]
            if score["lower_bound"]:
                flagged += 1
                assert score["ppl"] <= true * (1 + 1e-9)
                assert true > fast["perplexity"]
            else:
                assert score["ppl"] == pytest.approx(true, rel=1e-6)
    assert early.decisions[0]["removed"] == "layers.1.attn"
    assert flagged >= 5  # early stopping did cut candidates short
    assert early.counts["head"] < exact.counts["head"]


@pytest.mark.parametrize("cache,budget", [("cpu", None), ("sparse", 1e-9), ("sparse", None),
                                          ("auto", 2e-5)])
def test_cache_placements_give_the_same_search(cache, budget):
    model, ids = tiny_model("llama", seed=3, num_hidden_layers=5), tokens(3)
    reference = search(model, ids, steps=4, mode="naive", early_stop=False)
    result = search(model, ids, steps=4, cache=cache, cache_budget_gb=budget)

    assert [d["removed"] for d in result.decisions] == [d["removed"] for d in reference.decisions]
    assert [d["perplexity"] for d in result.decisions] == pytest.approx(
        [d["perplexity"] for d in reference.decisions], rel=1e-5)
    if cache == "sparse":
        assert result.cache.stride >= 2
    if cache == "auto":  # 20 kB holds fewer than all 10 boundaries of 6x24x64 floats
        assert result.cache.stride > 1


def test_disk_cache_gives_the_same_search_and_leaves_no_files(tmp_path):
    model, ids = tiny_model("llama", seed=3, num_hidden_layers=5), tokens(3)
    reference = search(model, ids, steps=4, mode="naive", early_stop=False)
    names = candidate_names(5, "mix")
    seen: list[list[tuple[str, int]]] = []

    def look(decision: dict) -> None:  # the boundaries are on disk while the search runs
        seen.append(sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir()))

    result = block_search(Units(model, ids, 4), names, StopRule(blocks=4), unit_params(names),
                          SearchSettings(batch_size=2, cache="disk", cache_dir=tmp_path),
                          on_decision=look)

    assert [d["removed"] for d in result.decisions] == [d["removed"] for d in reference.decisions]
    assert [d["perplexity"] for d in result.decisions] == pytest.approx(
        [d["perplexity"] for d in reference.decisions], rel=1e-5)
    boundary = 2 * 24 * 64 * 4  # windows per batch x seqlen x hidden x float32
    assert seen[0] == [(f"batch-{b}.bin", 10 * boundary) for b in range(3)]
    assert list(tmp_path.iterdir()) == []


class Interrupted(Exception):
    pass


def test_resume_replays_recorded_decisions_without_recomputing_them():
    model, ids = tiny_model("llama", seed=4, num_hidden_layers=4), tokens(4)
    names = candidate_names(4, "mix")
    settings = SearchSettings(batch_size=2, early_stop=False)
    full = block_search(Units(model, ids, 4), names, StopRule(blocks=5), unit_params(names),
                        settings)

    recorded: list[dict] = []

    def record_then_die(decision: dict) -> None:
        recorded.append(decision)
        if len(recorded) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        block_search(Units(model, ids, 4), names, StopRule(blocks=5), unit_params(names), settings,
                     on_decision=record_then_die)

    head_rows = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: head_rows.append(a[0].shape[0]))
    appended: list[dict] = []
    resumed = block_search(Units(model, ids, 4), names, StopRule(blocks=5), unit_params(names),
                           settings, previous=recorded, on_decision=appended.append)
    hook.remove()

    assert [d["removed"] for d in resumed.decisions] == [d["removed"] for d in full.decisions]
    assert [d["step"] for d in appended] == [3, 4, 5]
    assert resumed.decisions[:2] == recorded
    # steps 3..5 score 6, 5 and 4 remaining candidates over 3 batches; steps 1-2 nothing
    assert resumed.evaluations == 6 + 5 + 4
    assert len(head_rows) == (6 + 5 + 4) * 3


def test_params_ratio_stops_at_the_first_decision_reaching_it():
    model, ids = tiny_model("llama", seed=5, num_hidden_layers=4), tokens(5)
    names = candidate_names(4, "mix")
    params = unit_params(names)
    result = block_search(Units(model, ids, 4), names, StopRule(params_ratio=0.03), params,
                          SearchSettings(batch_size=3))

    ratios = [d["params_ratio"] for d in result.decisions]
    assert ratios[-1] >= 0.03 > ratios[-2]
    removed = sum(params.per_candidate[d["removed"]] for d in result.decisions)
    assert result.decisions[-1]["params_removed"] == removed
    assert result.decisions[-1]["params_ratio_non_embedding"] == pytest.approx(removed / 8_000)


def test_recorded_decisions_that_do_not_fit_are_a_user_error():
    model, ids = tiny_model("llama", num_hidden_layers=4), tokens()
    names = candidate_names(4, "mlp")
    with pytest.raises(UserError, match="recorded decision 1 .*layers.0.attn.* move search"):
        block_search(Units(model, ids, 4), names, StopRule(blocks=2), unit_params(names),
                     previous=[{"step": 1, "removed": "layers.0.attn"}])


def test_evaluation_order_does_not_change_the_decisions():
    """Best-looking first (Block Influence at step 1, previous scores after) or block index:
    the order only decides which candidates are dropped early, never the choice."""
    model, ids = peaked_model("qwen2", seed=5), repeated_tokens(5)
    by_index = search(model, ids, steps=4, batch_size=1, candidates_order="index")
    best_first = search(model, ids, steps=4, batch_size=1, candidates_order="previous")
    for key in ("removed", "perplexity"):
        assert [d[key] for d in best_first.decisions] == [d[key] for d in by_index.decisions]


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_search_matches_a_direct_search(family):
    """Gemma's block outputs pass through their own norms, zero when the block is bypassed; Gemma
    2's soft-capped logits are not linear in the final states, so its candidates are all scored
    exactly even with early stopping on."""
    model, ids = tiny_model(family), tokens()
    names = candidate_names(4, "mix")
    order, ppls, first = direct_greedy(model, ids, names, 3)

    result = search(model, ids, "mix", 3, early_stop=True)

    assert [d["removed"] for d in result.decisions] == order
    assert [d["perplexity"] for d in result.decisions] == pytest.approx(ppls, rel=1e-5)
    if family == "gemma2":
        step1 = result.decisions[0]["scores"]
        assert {c: s["ppl"] for c, s in step1.items()} == pytest.approx(first, rel=1e-5)
        assert not any(s["lower_bound"] for d in result.decisions for s in d["scores"].values())
