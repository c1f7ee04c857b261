"""Importance of coupled structures: LLM-Pruner's Taylor criteria and its magnitude/random baselines.

Pure tensor math, no hooks and no I/O.  Reference: Ma et al., "LLM-Pruner: On the Structural
Pruning of Large Language Models" (NeurIPS 2023), code horseee/LLM-Pruner,
``LLMPruner/pruner/hf_llama_pruner.py`` (``TaylorImportance``, ``MagnitudeImportance``).

The recipe names map to the reference's ``--taylor`` / ``--pruner_type`` options:

- ``element1`` (``param_first``): per element ``s = W * g``; a row or column scores ``sum |s|``.
- ``element2`` (``param_mix``): ``s = W * g - 1/2 * W * F * W`` with ``F`` the diagonal Fisher
  (mean over samples of squared per-sample gradients, the reference's ``acc_grad``).
- ``vector`` (``vectorize``): ``s = W * g``; a row or column scores ``|sum s|``.
- ``l1`` / ``l2``: ``sum |W|`` / ``sum W**2`` over the row or column (the reference's p-th power,
  no root).
- ``random``: one seeded uniform draw per unit.

A 1-D weight (an RMSNorm scale, touched by a hidden channel) scores ``|s|`` per element for every
criterion, as in the reference.  A unit's score is then the group reduction (``sum``, ``mean``,
``max``, ``prod``) over the weights it couples, taken per position inside the unit, summed over the
positions (the reference's ``consecutive_groups`` sum over a head's ``head_dim`` channels).
"""

from __future__ import annotations

import torch

GRADIENT_KINDS = ("element1", "element2", "vector")
KINDS = (*GRADIENT_KINDS, "l1", "l2", "random")
AGGREGATIONS = ("sum", "mean", "max", "prod")


def salience(
    weight: torch.Tensor, grad: torch.Tensor | None, fisher: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """Per-element importance term of ``weight`` in fp32 (``grad``/``fisher``: fp32 accumulators)."""
    w = weight.detach().float()
    if kind == "l1":
        return w.abs()
    if kind == "l2":
        return w.square()
    first = w * grad
    if kind == "element2":
        return first - 0.5 * w * fisher * w
    if kind in ("element1", "vector"):
        return first
    raise ValueError(f"no per-element salience for importance '{kind}'")


def channel_importance(
    weight: torch.Tensor,
    grad: torch.Tensor | None,
    fisher: torch.Tensor | None,
    kind: str,
    dim: int,
) -> torch.Tensor:
    """Importance of every slice of ``weight`` along ``dim`` (0: rows, 1: columns), fp32."""
    s = salience(weight, grad, fisher, kind)
    if s.dim() == 1:
        return s.abs()
    other = 1 - dim
    if kind == "vector":
        return s.sum(other).abs()
    return s.abs().sum(other)


def reduce_over_weights(stacked: torch.Tensor, aggregation: str) -> torch.Tensor:
    """The reference's group reduction over the weights of a coupled structure (dim 0)."""
    if aggregation == "sum":
        return stacked.sum(0)
    if aggregation == "mean":
        return stacked.mean(0)
    if aggregation == "max":
        return stacked.amax(0)
    if aggregation == "prod":
        return stacked.prod(0)
    raise ValueError(f"unknown aggregation '{aggregation}'; use one of {', '.join(AGGREGATIONS)}")


def unit_importance(per_weight: list[torch.Tensor], aggregation: str) -> torch.Tensor:
    """Scores of ``n`` units from per-weight tensors of shape ``[n, positions]`` (or ``[n]``):
    reduce over the weights at each position, then sum over the positions of a unit."""
    reduced = reduce_over_weights(torch.stack(per_weight), aggregation)
    return reduced.sum(1) if reduced.dim() == 2 else reduced


def random_importance(n: int, generator: torch.Generator) -> torch.Tensor:
    """The ``random`` baseline: one uniform draw per unit from a seeded generator (CPU, fp32)."""
    return torch.rand(n, generator=generator)
