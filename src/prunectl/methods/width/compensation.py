"""FLAP's bias compensation (pure): what removed channels contributed on average becomes a bias.

A removed input channel ``j`` of ``o_proj`` / ``down_proj`` contributed ``W[:, j] * x_j`` to the
output; replacing ``x_j`` by its calibration mean keeps the expected output, so the pruned layer
adds ``W[:, removed] @ mean[removed]`` to its bias (the reference's ``compress`` with
``bias=True``).  It must be computed on the dense weights, before slicing.
"""

from __future__ import annotations

import torch

from prunectl.errors import UserError
from prunectl.methods.width.units import removed_channels


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """The bias to add to a linear layer ([out, in] ``weight``) whose ``removed`` inputs go."""
    index = torch.tensor(removed, dtype=torch.long, device=weight.device)
    w = weight.detach().index_select(1, index).to(torch.float64)
    m = mean.to(weight.device, torch.float64).index_select(0, index)
    return (w @ m).to(weight.dtype)


def plan_biases(adapter, plan, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``layers.N.o_proj`` / ``layers.N.down_proj`` → bias to add for every projection ``plan``
    takes inputs from, from the dense weights and the calibration means in ``stats``."""
    biases = {}
    for i, lp in plan.layers.items():
        for module, present in (("o_proj", lp.attention), ("down_proj", lp.mlp)):
            removed = removed_channels(adapter, plan, i, module) if present else []
            if not removed:
                continue
            linear = getattr(adapter, module)(i)  # only when needed: MoE layers have no down_proj
            key = f"layers.{i}.{module}.mean"
            if key not in stats:
                raise UserError(
                    f"calibration statistics lack {key} for bias compensation; "
                    "re-run `prunectl calibrate --force`"
                )
            biases[f"layers.{i}.{module}"] = compensation_bias(linear.weight, stats[key], removed)
    return biases
