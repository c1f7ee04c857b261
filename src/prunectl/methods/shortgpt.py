"""``method: shortgpt``: one-shot layer removal by Block Influence (ShortGPT, arXiv 2403.03853).

BI_i = 1 - mean over calibration tokens of cos(x_i, x_{i+1}), where x_i enters layer i and
x_{i+1} leaves it.  A layer that barely turns the residual stream matters little; the layers are
removed in ascending BI order, so like BlockPruner's search the order is nested and
``apply --blocks K`` takes any prefix.

Deviation from implementations that read ``output_hidden_states``: their last entry is taken
after the final norm, so the last layer's BI compares against a normalised state; here every
layer compares its raw input and output.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.plan import Plan
from prunectl.methods.removal_order import (
    candidate_counts,
    candidate_names,
    plan_from_decisions,
    stop_rule,
)
from prunectl.modeling.placement import execution_device

if TYPE_CHECKING:
    from prunectl.pipelines.layers import Layers


def block_influence(layers: Layers) -> torch.Tensor:
    """BI of every decoder layer (float64 [num_layers]), averaged over all calibration tokens.

    The cosine sums stay on the execution device until the end: no host copy per layer."""
    adapter = layers.adapter
    cos_sum = torch.zeros(adapter.num_layers, dtype=torch.float64,
                          device=execution_device(adapter.model))

    def add(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
        cos_sum[i] += cos.sum(dtype=torch.float64)

    with torch.inference_mode():
        layer_pass = layers.start()
        for i in range(adapter.num_layers):
            layer_pass.advance(i, lambda _b, x, y, i=i: add(i, x, y))
    return 1.0 - cos_sum.cpu() / layers.tokens.numel()


class ShortGPTConfig(MethodConfig):
    name: Literal["shortgpt"] = "shortgpt"
    #: calibration windows per forward
    batch_size: int = Field(4, ge=1)


class ShortGPTMethod(Method):
    """Remove the decoder layers with the lowest Block Influence."""

    name = "shortgpt"
    Config = ShortGPTConfig
    calibration = "layer_inputs"
    targets = frozenset({"blocks", "params"})

    def check_target(self, inputs) -> None:
        names = candidate_names(inputs.adapter.num_layers, "layer")
        params = candidate_counts(inputs.model, names)
        stop_rule(inputs.target, inputs.model, names, params, "layer")

    def score(self, inputs, stats) -> dict[str, torch.Tensor]:
        inputs.require_tokens("shortgpt")
        layers = dataclasses.replace(inputs.layers, batch_size=self.config.batch_size)
        return {"block_influence": block_influence(layers)}

    def search(self, inputs, scores) -> Plan:
        adapter, model = inputs.adapter, inputs.model
        bi = scores.get("block_influence")
        if bi is None or bi.shape != (adapter.num_layers,):
            raise UserError(
                "scores/scores.safetensors holds no block influence for this model; "
                "run `prunectl score --force`"
            )
        names = candidate_names(adapter.num_layers, "layer")
        params = candidate_counts(model, names)
        target = stop_rule(inputs.target, model, names, params, "layer")
        order = sorted(range(adapter.num_layers), key=lambda i: (float(bi[i]), i))
        decisions, removed = [], 0
        for step, i in enumerate(order, 1):
            removed += params.per_candidate[names[i]]
            decisions.append({
                "step": step,
                "removed": names[i],
                "block_influence": float(bi[i]),
                **params.removal(removed),
            })
        return plan_from_decisions("shortgpt", decisions, target, adapter.num_layers, params, {})
