"""Aligned widths by default (``modeling.alignment``): the rule, ``round_to: 1`` reproducing the
exact cuts of the code before it bit for bit, and every width method's kept widths being
multiples of the alignment on every family of the suite, the target met by the stated rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from exact_plans import CASES, OLD_DEFAULT, plan_for

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.puzzle.variants import mlp_kept
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.alignment import alignment, snap
from prunectl.modeling.params import count_parameters

EXACT = json.loads((Path(__file__).parent / "fixtures" / "exact_plans.json").read_text())


def test_the_rule_caps_the_default_for_small_widths():
    assert alignment(None, [1536, 1536]) == 64  # SmolLM2's MLP
    assert alignment(None, [576], factor=6) == 32  # its hidden size with 6 query heads kept
    assert alignment(None, [96]) == 16 and alignment(None, [64], factor=2) == 16  # test models
    assert alignment(None, [0, 0]) == 1  # routed experts: nothing to align
    assert alignment(1, [1536]) == 1 and alignment(8, [96]) == 8  # explicit: as given
    # nearest multiple, ties to the even one (40 -> 32, 88 -> 96), at least one multiple
    assert [snap(k, 96, 16) for k in (0, 1, 23, 24, 40, 87, 88, 96)] == [0, 16, 16, 32, 32, 80,
                                                                          96, 96]
    assert snap(37, 100, 1) == 37
    assert mlp_kept(1536, [k / 8 for k in range(1, 8)], 64) == [192 * k for k in range(9)]
    assert mlp_kept(96, [0.25, 0.5, 0.75], 16) == [0, 32, 48, 64, 96]


@pytest.mark.parametrize(("name", "family", "overrides", "section", "ratio"), CASES,
                         ids=[c[0] for c in CASES])
def test_round_to_one_reproduces_the_exact_plans(name, family, overrides, section, ratio):
    """``tests/fixtures/exact_plans.json`` was written by the code before alignment existed."""
    plan = plan_for(family, overrides, {**section, "round_to": OLD_DEFAULT.get(name, 1)}, ratio)
    assert plan == EXACT[name]


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"]
METHODS = [("flap", {}), ("wanda-sp", {}), ("mag-sp", {"structure": "AL-AM"}),
           ("taylor", {"layer_start": 0}), ("magnitude", {}), ("slimgpt", {}),
           ("slimgpt", {"allocation": "AL-AM"})]
ADAPTIVE = {"flap", "wanda-sp", "mag-sp", "taylor"}  # and slimgpt AL-AM: rounded per layer


def search(family: str, section: dict, ratio: float = 0.3):
    model = tiny_model(family, seed=5)
    tokens = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(5))
    method = create_method(parse_method_config(section))
    inputs = Inputs(model, tokens, batch_size=4, target=Target(params_ratio=ratio))
    stats = method.statistics(inputs) if method.uses_statistics else {}
    return model, method.search(inputs, method.score(inputs, stats))


def mlp_widths(model, plan) -> list[int]:
    full = model.config.intermediate_size
    return [full if plan.layer(i).mlp_channels is None else len(plan.layer(i).mlp_channels)
            for i in range(model.config.num_hidden_layers)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("name", "options"), METHODS,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in METHODS])
def test_default_widths_are_aligned_and_meet_the_target(family, name, options):
    model, plan = search(family, {"name": name, **options})
    _, exact = search(family, {"name": name, **options, "round_to": 1})
    full, hidden = model.config.intermediate_size, model.config.hidden_size
    multiple = alignment(None, [full])
    assert multiple == 16
    widths, exact_widths = mlp_widths(model, plan), mlp_widths(model, exact)
    assert all(w % multiple == 0 or w == full for w in widths), widths
    assert widths != exact_widths  # the exact cut was not aligned: rounding did something
    channel = 3 * hidden  # gate, up and down rows/columns of one MLP channel
    removed = {id(p): p.achieved.get("params_removed", p.achieved.get("params_removed_estimate"))
               for p in (plan, exact)}
    goal = plan.achieved["target_params_removed"]
    gap, exact_gap = abs(removed[id(plan)] - goal), abs(removed[id(exact)] - goal)
    # a layer that kept fewer channels than one step keeps one step
    forced = sum(max(multiple - e, 0) for e in exact_widths) * channel
    if name in ADAPTIVE or options.get("allocation") == "AL-AM":
        # each layer to a neighbouring multiple: within half a step of the target, unless the
        # exact cut itself missed by more
        assert gap <= max(multiple * channel / 2, exact_gap) + forced, (gap, exact_gap)
        assert all(abs(w - e) < multiple or e < multiple
                   for w, e in zip(widths, exact_widths, strict=True))
        return
    if name == "magnitude":  # one uniform step: every layer's MLP, or the hidden size
        heads = plan.achieved["head_units_kept"] * 2  # query_head units: one head per KV group
        step = max(multiple * channel * len(widths),
                   alignment(None, [hidden], heads) * count_parameters(model)["total"] / hidden)
        assert plan.achieved["hidden_size"] % alignment(None, [hidden], heads) == 0
    else:  # slimgpt's ratio grid: one layer's step
        step = multiple * channel
    assert gap <= exact_gap + step, (gap, exact_gap, step)
