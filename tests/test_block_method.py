"""BlockMethod's hooks: score computes step 1, search reuses it, persists every decision and
resumes from the progress file; plans and prefixes; targets it cannot reach."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods.block import BlockMethod
from prunectl.methods.inputs import Inputs, Journal, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.removal_order import candidate_names, plan_for_k
from prunectl.modeling.params import count_parameters


def make_inputs(tmp_path, model, ids, blocks=None, params_ratio=None) -> Inputs:
    """What the search step hands the method: the target, its journal (``search/``) and
    scratch directory."""
    return Inputs(model, ids, target=Target(blocks=blocks, params_ratio=params_ratio),
                  journal=Journal(tmp_path / "search"), scratch=tmp_path / "search" / "cache")


def method(**options) -> BlockMethod:
    config = parse_method_config({"name": "blockpruner", "batch_size": 2, **options})
    return create_method(config)


def calibration(seed=0):
    return torch.randint(4, 260, (6, 20), generator=torch.Generator().manual_seed(seed))


class HeadCalls:
    """Rows through the LM head: every candidate evaluation pays one per window."""

    def __init__(self, model):
        self.rows = 0
        self.handle = model.lm_head.register_forward_hook(self._count)

    def _count(self, module, args, out):
        self.rows += args[0].shape[0]


def progress_lines(tmp_path) -> list[dict]:
    text = (tmp_path / "search" / "progress.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_config_rejects_unknown_keys_and_values():
    with pytest.raises(ValueError, match="block_type"):
        parse_method_config({"name": "block", "block_type": "heads"})
    with pytest.raises(ValueError, match="extra"):
        parse_method_config({"name": "block", "blocks": 3})


def test_search_reuses_step_one_from_score_and_persists_each_decision(tmp_path):
    model, ids = tiny_model("llama", num_hidden_layers=4), calibration()
    block = method(early_stop=False)
    inputs = make_inputs(tmp_path, model, ids, blocks=3)
    scores = block.score(inputs, {})
    names = candidate_names(4, "mix")
    assert scores["perplexity"].shape == (len(names),)

    calls = HeadCalls(model)
    plan = block.search(inputs, scores)
    assert calls.rows == (7 + 6) * len(ids)  # steps 2 and 3 only; step 1 came from `score`

    lines = progress_lines(tmp_path)
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert plan.removal_order == [line["removed"] for line in lines]
    first = lines[0]
    assert first["removed"] == names[int(scores["removed"][0])]
    assert first["scores"][names[0]]["ppl"] == pytest.approx(float(scores["perplexity"][0]))
    total = count_parameters(model)
    for line in lines:
        assert line["params_ratio"] == pytest.approx(line["params_removed"] / total["total"])
        assert set(line["scores"]) == set(names) - {x["removed"] for x in lines[: line["step"] - 1]}
    assert plan.curve[0] == {"blocks": 0, "perplexity": first["dense_perplexity"],
                             "params_removed": 0, "params_ratio": 0.0,
                             "params_ratio_non_embedding": 0.0}
    assert [p["perplexity"] for p in plan.curve[1:]] == [line["perplexity"] for line in lines]
    assert plan.achieved["blocks"] == 3
    assert plan.achieved["params_removed"] == lines[-1]["params_removed"]
    removed_kinds = {(i, k) for i, layer in plan.layers.items()
                     for k, kept in (("attn", layer.attention), ("mlp", layer.mlp)) if not kept}
    assert removed_kinds == {(int(n.split(".")[1]), n.split(".")[2]) for n in plan.removal_order}


def test_larger_target_resumes_from_the_progress_file(tmp_path):
    model, ids = tiny_model("llama", seed=1, num_hidden_layers=4), calibration(1)
    block = method(early_stop=False)
    short = block.search(make_inputs(tmp_path, model, ids, blocks=2), {})
    calls = HeadCalls(model)
    longer = block.search(make_inputs(tmp_path, model, ids, blocks=4), {})

    assert longer.removal_order[:2] == short.removal_order
    assert calls.rows == (6 + 5) * len(ids)  # steps 3 and 4 only
    assert [line["step"] for line in progress_lines(tmp_path)] == [1, 2, 3, 4]
    fresh_inputs = make_inputs(tmp_path / "fresh", model, ids, blocks=4)
    fresh = method(early_stop=False).search(fresh_inputs, {})
    assert fresh.removal_order == longer.removal_order

    calls = HeadCalls(model)
    smaller = block.search(make_inputs(tmp_path, model, ids, blocks=1), {})
    assert smaller.removal_order == longer.removal_order and smaller.achieved["blocks"] == 1
    assert calls.rows == 0  # nothing left to compute


def test_params_ratio_target_and_prefixes(tmp_path):
    model, ids = tiny_model("llama", seed=2, num_hidden_layers=4), calibration(2)
    total = count_parameters(model)["total"]
    inputs = make_inputs(tmp_path, model, ids, params_ratio=0.3)
    plan = method(block_type="layer").search(inputs, {})
    ratios = [p["params_ratio"] for p in plan.curve]
    assert ratios[-1] >= 0.3 > ratios[-2]
    assert plan.achieved["blocks"] == len(plan.removal_order)
    assert plan.achieved["params_ratio"] == pytest.approx(plan.achieved["params_removed"] / total)
    assert any("target 0.3" in note for note in plan.notes)

    one = plan_for_k(plan, 1)
    assert one.removal_order == plan.removal_order
    index = int(plan.removal_order[0].split(".")[1])
    assert set(one.layers) == {index}
    assert not one.layers[index].attention and not one.layers[index].mlp
    assert one.achieved["params_ratio"] == plan.curve[1]["params_ratio"]
    with pytest.raises(UserError, match=r"--blocks 9 exceeds the \d removals searched; run "
                                        r"`prunectl search --blocks 9`"):
        plan_for_k(plan, 9)


@pytest.mark.parametrize("target,message", [
    ({"blocks": 9}, "target.blocks=9 would remove every one of the 8 candidate blocks"),
    ({"blocks": 8}, r"whole network\); lower it to at most 7"),
    ({"params_ratio": 0.99}, "target.params_ratio=0.99 is out of reach"),
    ({}, "target.blocks or target.params_ratio is required"),
])
def test_unreachable_targets_are_user_errors(tmp_path, target, message):
    model, ids = tiny_model("llama", num_hidden_layers=4), calibration()
    with pytest.raises(UserError, match=message):
        method().search(make_inputs(tmp_path, model, ids, **target), {})
    assert not (tmp_path / "search" / "progress.jsonl").exists()


def test_scores_for_other_candidates_are_not_reused(tmp_path):
    model, ids = tiny_model("llama", seed=3, num_hidden_layers=4), calibration(3)
    mlp_scores = method(block_type="mlp").score(make_inputs(tmp_path, model, ids), {})
    plan = method(block_type="mix").search(make_inputs(tmp_path, model, ids, blocks=1), mlp_scores)
    first = progress_lines(tmp_path)[0]
    assert len(first["scores"]) == 8
    assert plan.curve[0]["perplexity"] == pytest.approx(first["dense_perplexity"])
    assert math.isfinite(first["dense_perplexity"])
