"""True calibration perplexity of a candidate plan, without copying the model.

The plan's pruned projections get the weights ``apply`` would give them — the least-squares
solutions of the sequential pass (``reconstruct: least_squares``; ``bld`` distils each block
from there, its other projections hooked too), or the dense weights with the
removed input columns zero (``none``) plus FLAP's mean bias (``bias``) — and forward hooks make
``o_proj``/``down_proj`` compute them (:func:`~prunectl.methods.width.sequential.hook_solution`),
which is exactly what the sliced model computes.  The calibration windows then run unit by unit
on the block-unit runner (``inputs.units``, as the block search computes its NLL), a removed
block's unit skipped; the hooks are removed afterwards.
"""

from __future__ import annotations

import math

import torch

from prunectl.methods.inputs import Inputs
from prunectl.plan import Plan
from prunectl.methods.width.compensation import plan_biases
from prunectl.methods.width.least_squares import augmented
from prunectl.methods.width.reconstruct import REFITS, least_squares_solutions, without_columns
from prunectl.methods.width.sequential import Solution, hook_solution
from prunectl.methods.width.units import removed_channels


def zeroed_solutions(inputs: Inputs, plan: Plan,
                     biases: dict[str, torch.Tensor] | None = None) -> dict[str, Solution]:
    """Each pruned projection's dense ``[W, b]`` with the removed columns zero (all of it, bias
    too, when the block goes), ``biases`` (FLAP's compensation) added to ``b``."""
    adapter, solutions = inputs.adapter, {}
    for i in range(adapter.num_layers):
        for name in ("o_proj", "down_proj"):
            removed = removed_channels(adapter, plan, i, name)
            if not removed:
                continue
            linear, key = getattr(adapter, name)(i), f"layers.{i}.{name}"
            weight = without_columns(augmented(linear.weight, linear.bias), removed)
            if biases and key in biases and len(removed) < linear.in_features:
                weight[:, -1] += biases[key].to(weight.device, torch.float64)
            solutions[key] = Solution(removed, weight)
    return solutions


def plan_solutions(config, inputs: Inputs, plan: Plan, stats: dict | None) -> dict[str, Solution]:
    """What ``apply`` with ``config.reconstruct`` would give every pruned projection; ``stats``
    are the dense calibration statistics (``bias`` only)."""
    if config.reconstruct in REFITS:
        return least_squares_solutions(inputs.layers, plan,
                                       config.reconstruct_target, config.reconstruct_damp,
                                       bld=config if config.reconstruct == "bld" else None)
    if config.reconstruct == "bias":
        return zeroed_solutions(inputs, plan, plan_biases(inputs.adapter, plan, stats))
    return zeroed_solutions(inputs, plan)


def calibration_perplexity(config, inputs: Inputs, plan: Plan, stats: dict | None = None) -> float:
    """Perplexity of the calibration windows through the model as ``plan`` would leave it."""
    inputs.require_tokens("method.verify", min_length=2)
    solutions = plan_solutions(config, inputs, plan, stats)
    adapter, handles = inputs.adapter, []
    removed = {2 * i + block for i in range(adapter.num_layers)
               for block, kept in enumerate((plan.layer(i).attention, plan.layer(i).mlp))
               if not kept}
    try:
        for key, solution in solutions.items():
            _, i, name = key.split(".")
            linear = getattr(adapter, name)(int(i))
            handles.extend(hook_solution(inputs.model, linear, solution))
        runner = inputs.units.runner()
        with torch.inference_mode():
            return math.exp(runner.total_nll(removed, shard=True) / runner.predicted_tokens)
    finally:
        for handle in handles:
            handle.remove()
