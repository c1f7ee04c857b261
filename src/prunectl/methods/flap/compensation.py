"""FLAP's bias compensation (pure): what removed channels contributed on average becomes a bias.

A removed input channel ``j`` of ``o_proj`` / ``down_proj`` contributed ``W[:, j] * x_j`` to the
output; replacing ``x_j`` by its calibration mean keeps the expected output, so the pruned layer
adds ``W[:, removed] @ mean[removed]`` to its bias (the reference's ``compress`` with
``bias=True``).  It must be computed on the dense weights, before slicing.
"""

from __future__ import annotations

import torch


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """The bias to add to a linear layer ([out, in] ``weight``) whose ``removed`` inputs go."""
    index = torch.tensor(removed, dtype=torch.long, device=weight.device)
    w = weight.detach().index_select(1, index).to(torch.float64)
    m = mean.to(weight.device, torch.float64).index_select(0, index)
    return (w @ m).to(weight.dtype)
