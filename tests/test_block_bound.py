"""The NLL lower bound that lets block-search candidates skip the LM head, against the exact NLL
computed here from full logits and ``cross_entropy``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from prunectl.pipelines.blocks.bound import NllLowerBound
from prunectl.pipelines.blocks.runner import UnitRunner


def exact_nll(model, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    logits = model.lm_head(model.model.norm(hidden)).double()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                 reduction="sum"))


def setup(model, topk: int, windows: int = 4, seqlen: int = 20):
    ids = torch.randint(0, model.config.vocab_size, (windows, seqlen),
                        generator=torch.Generator().manual_seed(7))
    runner = UnitRunner(model, ids, batch_size=2)
    bound = NllLowerBound(runner, topk)
    with torch.inference_mode():
        finals = [runner.run(runner.embed(b), 0, runner.num_units, set())
                  for b in range(len(runner.batches))]
        dense = bound.refresh(finals)
    return runner, bound, finals, dense


def candidate_hidden(runner, b: int, skip: set[int]) -> torch.Tensor:
    return runner.run(runner.embed(b), 0, runner.num_units, skip)


@torch.inference_mode()
def test_refresh_returns_the_current_models_nll_and_summarises_each_position():
    model = tiny_model("llama", seed=1)
    runner, bound, finals, dense = setup(model, topk=5)

    assert dense == pytest.approx(sum(exact_nll(model, h, runner.batches[b])
                                      for b, h in enumerate(finals)), rel=1e-6)
    logits = model.lm_head(model.model.norm(finals[0]))[:, :-1].double()
    at = bound.positions[0]
    assert torch.equal(at.tokens[..., -1], runner.batches[0][:, 1:])
    assert torch.equal(logits.gather(-1, at.tokens[..., :-1]), logits.topk(5, dim=-1).values)
    # the tail distribution q: the current softmax without the likely tokens and the target
    tail = logits.scatter(-1, at.tokens, float("-inf"))
    q = tail.softmax(-1)
    entropy = -(q * q.log().nan_to_num(neginf=0.0)).sum(-1)
    assert torch.allclose(at.tail.double(), q @ model.lm_head.weight.double(), atol=1e-5)
    assert torch.allclose(at.tail_constant.double(), entropy, atol=1e-5)


@torch.inference_mode()
def test_bound_is_exact_for_the_current_model_itself():
    """Gibbs' inequality is an equality when q is the candidate's own tail distribution."""
    model = tiny_model("llama", seed=5)
    runner, bound, finals, _ = setup(model, topk=3)
    for b, hidden in enumerate(finals):
        assert bound.lower(hidden, b) == pytest.approx(
            exact_nll(model, hidden, runner.batches[b]), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
@torch.inference_mode()
def test_bound_over_the_whole_vocabulary_is_the_exact_nll(family):
    """With all but one token likely, the tail is at most one token, whose term the bound holds
    exactly (or none, when the target is the unlikely one), so it must equal the NLL; counting
    a target among the likely tokens twice would not."""
    model = tiny_model(family, seed=2)
    runner, bound, _, _ = setup(model, topk=model.config.vocab_size)
    for b in range(len(runner.batches)):
        hidden = candidate_hidden(runner, b, {1})
        assert bound.lower(hidden, b) == pytest.approx(
            exact_nll(model, hidden, runner.batches[b]), rel=1e-5)


@torch.inference_mode()
def test_bound_with_few_likely_tokens_stays_below_the_exact_nll():
    model = tiny_model("llama", seed=3)
    runner, bound, _, _ = setup(model, topk=4)
    gaps = []
    for skip in ({0}, {3}, {1, 2}):
        for b in range(len(runner.batches)):
            hidden = candidate_hidden(runner, b, skip)
            exact = exact_nll(model, hidden, runner.batches[b])
            lower = bound.lower(hidden, b)
            assert lower <= exact * (1 + 1e-6)
            gaps.append(exact - lower)
    assert min(gaps) > 0  # a candidate's tail differs from the current model's


@torch.inference_mode()
def test_bound_includes_the_lm_head_bias():
    model = tiny_model("llama", seed=4)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.copy_(model.lm_head.weight)
    head.bias.copy_(torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(0)))
    model.lm_head = head
    runner, bound, _, _ = setup(model, topk=model.config.vocab_size)
    hidden = candidate_hidden(runner, 0, {2})
    assert bound.lower(hidden, 0) == pytest.approx(
        exact_nll(model, hidden, runner.batches[0]), rel=1e-5)
