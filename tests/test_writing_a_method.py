"""The "Writing a method" example of ``docs/architecture.md``, read out of the page and run as it
stands: registered under a temporary registry name, its hooks go through ``Inputs`` on a tiny
model and give what an independent computation on the plain Hugging Face model gives."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

from prunectl.errors import UserError
from prunectl.methods import registry
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config

DOC = Path(__file__).parent.parent / "docs" / "architecture.md"


def example_source() -> str:
    """The first ``python`` code block under the "Writing a method" heading."""
    section = DOC.read_text().split("## Writing a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def example(monkeypatch):
    """The documented example as a module, registered as ``mine``."""
    module = types.ModuleType("writing_a_method_example")
    exec(compile(example_source(), str(DOC), "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.METHODS, "mine", f"{module.__name__}:MyMethod")
    return module


def test_the_documented_method_runs_through_its_hooks(example):
    model = tiny_model("llama")
    tokens = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(0))
    method = create_method(parse_method_config({"name": "mine"}))
    assert type(method) is example.MyMethod and method.pipeline is not None
    target = Target(params_ratio=0.25, ratio_of="units").check(method)
    with pytest.raises(UserError, match="method mine cannot meet target.params_ratio"):
        Target(params_ratio=0.25).check(method)
    inputs = Inputs(model, tokens, batch_size=2, target=target)

    stats = method.statistics(inputs)
    # independently: the down projections' inputs in one plain forward of the whole model
    sumsq = {}
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda m, args, i=i: sumsq.__setitem__(i, args[0].pow(2).sum((0, 1))))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    assert sorted(stats) == [f"layers.{i}.sumsq" for i in range(4)]
    for i in range(4):
        torch.testing.assert_close(stats[f"layers.{i}.sumsq"], sumsq[i], rtol=1e-4, atol=1e-4)

    scores = method.score(inputs, stats)
    plan = method.search(inputs, scores)
    removed = {}
    for i, layer in enumerate(model.model.layers):
        expected = layer.mlp.down_proj.weight.detach().abs().sum(0) * sumsq[i].sqrt()
        torch.testing.assert_close(scores[f"layers.{i}.channels"], expected, rtol=1e-4, atol=1e-4)
        kept = plan.layer(i).mlp_channels
        assert len(kept) == 72  # 96 channels, a quarter removed
        removed[i] = sorted(set(range(96)) - set(kept))
        assert scores[f"layers.{i}.channels"][removed[i]].max() <= \
            scores[f"layers.{i}.channels"][kept].min()

    # removing a channel is zeroing its down_proj column in the dense model
    masked = tiny_model("llama")
    with torch.no_grad():
        for i, layer in enumerate(masked.model.layers):
            layer.mlp.down_proj.weight[:, removed[i]] = 0
        expected = masked(tokens).logits
    pruned = method.apply(inputs, plan, stats)
    assert pruned.model.layers[0].mlp.down_proj.in_features == 72
    with torch.no_grad():
        torch.testing.assert_close(pruned(tokens).logits, expected, rtol=1e-4, atol=1e-4)
