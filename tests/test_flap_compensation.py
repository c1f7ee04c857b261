"""Bias compensation: the exact formula, and a measured drop in layer output error on held-out
text."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TEXT, byte_tokenizer, tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.width.compensation import compensation_bias
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.params import count_parameters


def test_compensation_bias_is_the_removed_columns_times_their_means():
    torch.manual_seed(0)
    w, mean = torch.randn(5, 8), torch.randn(8, dtype=torch.float64)
    expected = sum(w[:, j].double() * mean[j] for j in (1, 4, 6))
    torch.testing.assert_close(compensation_bias(w, mean, [1, 4, 6]), expected.float())


def windows(text: str, n: int, seqlen: int = 32) -> torch.Tensor:
    ids = byte_tokenizer()(text)["input_ids"]
    return torch.tensor(ids[: n * seqlen]).reshape(n, seqlen)


def inputs_for(model, tokens, ratio: float) -> Inputs:
    return Inputs(model, tokens, batch_size=4, target=Target(params_ratio=ratio))


def layer_errors(dense, pruned, tokens) -> list[float]:
    """||layer_i(h) - pruned layer_i(h)|| for the dense model's own inputs h to every layer."""
    a, b = Adapter(dense), Adapter(pruned)
    errors = []
    with torch.no_grad():
        hidden = a.embed_tokens(tokens)
        inputs = a.block_inputs(hidden)
        for i in range(a.num_layers):
            out = a.layer_forward(i, hidden, inputs)
            errors.append(float((out - b.layer_forward(i, hidden, b.block_inputs(hidden))).norm()))
            hidden = out
    return errors


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_compensation_reduces_layer_output_error_on_held_out_tokens(family):
    """The same plan applied with and without the compensation biases."""
    from prunectl.modeling.surgery import apply_plan

    dense = tiny_model(family, num_attention_heads=8, num_key_value_heads=4)
    calibration = windows(TEXT * 12, 16)
    held_out = windows("A held-out paragraph about something else entirely. " * 30, 8)
    method = create_method(parse_method_config({"name": "flap"}))
    inputs = inputs_for(dense, calibration, 0.25)
    stats = method.statistics(inputs)
    plan = method.search(inputs, method.score(inputs, stats))
    assert plan.achieved["query_heads_removed"] > 0 and plan.achieved["mlp_channels_removed"] > 0
    compensated = method.apply(inputs_for(copy.deepcopy(dense), calibration, 0.25), plan, stats)
    plain = apply_plan(copy.deepcopy(dense), plan)
    added = count_parameters(compensated)["total"] - count_parameters(plain)["total"]
    assert added == plan.achieved["bias_params_added"] > 0
    assert count_parameters(dense)["total"] - count_parameters(compensated)["total"] == (
        plan.achieved["params_removed"])
    err_on = layer_errors(dense, compensated, held_out)
    err_off = layer_errors(dense, plain, held_out)
    assert all(on < off for on, off in zip(err_on, err_off)), (err_on, err_off)
