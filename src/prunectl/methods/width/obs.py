"""SlimGPT's batched greedy OBS pruning of a projection's input columns (pure tensor math).

For a projection ``W~`` ([out, n + 1], the bias as the last column against a constant input) and
the damped input second moment ``H``, removing the column group ``S`` from the active set ``A``
costs (Optimal Brain Surgeon, with ``Hinv = (H_AA)^-1``)

    e_S = tr( W_S (Hinv_SS)^-1 W_S^T )

which is exactly the increase of ``E||W~ x~ - W~' x~||^2`` (plus the ridge term) when the other
active columns take the optimal update ``W_A -= W_S (Hinv_SS)^-1 Hinv_SA``.  SlimGPT (Ling et al.,
NeurIPS 2024, arXiv 2412.18110) removes groups greedily by that error and updates the rest after
every batch: a head (``head_dim`` columns; with GQA a whole KV group's query heads) one at a time,
MLP channels in batches that shrink as pruning goes on (its *dynamic group size*).

Deviations from the reference (``struct_prune``): a group's error is the exact ``e_S`` above, from
a Cholesky factor of ``Hinv_SS`` (the reference sums single-column errors with the Cholesky
diagonal in place of ``Hinv``'s, an approximation); the constant input column is never removed
and is updated like the others, so the compensation also moves the bias (the reference's layers
have none); the batch schedule keeps the reference's constants (``(T - 512) // 2`` channels at
first, at least 64 and at most 1024 per batch), which on a small MLP means 64-channel batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunectl.methods.width.least_squares import cholesky, damped


@dataclass
class Pruned:
    removed: list[int]  # group indices, in removal order
    errors: list[float]  # each group's OBS error when it was chosen
    weight: torch.Tensor  # updated [out, n + 1], removed columns zero


def mlp_batches(target: int) -> list[int]:
    """The reference's dynamic batch sizes for removing ``target`` single columns."""
    sizes, block, left = [], (target - 512) // 2, target
    while left > 0:
        count = min(left, max(block, 64), 1024)
        sizes.append(count)
        left -= count
        block = (block - 512) // 2
    return sizes


def group_errors(weight: torch.Tensor, hinv: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``e_S`` for each row of ``groups`` ([g, s] column indices), batched."""
    if groups.shape[1] == 1:
        cols = groups[:, 0]
        return weight[:, cols].pow(2).sum(0) / hinv.diagonal()[cols]
    blocks = hinv[groups[:, :, None], groups[:, None, :]]  # [g, s, s]
    factor = torch.linalg.cholesky(blocks)
    w = weight[:, groups].permute(1, 2, 0)  # [g, s, out]
    z = torch.linalg.solve_triangular(factor, w, upper=False)
    return z.pow(2).sum(dim=(1, 2))


def remove_columns(weight: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The OBS update that zeroes ``cols`` and compensates with the other active columns
    (``hinv`` is zero outside the active set)."""
    block = hinv[cols][:, cols]
    coeff = torch.cholesky_solve(weight[:, cols].T, cholesky(block, "slimgpt")).T  # [out, |S|]
    weight = weight - coeff @ hinv[cols]
    weight[:, cols] = 0
    return weight


def _active_inverse(h: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``(H_AA)^-1`` embedded in an ``[n+1, n+1]`` zero matrix (Cholesky, SparseGPT-style)."""
    idx = active.nonzero().squeeze(1)
    sub = torch.cholesky_inverse(cholesky(h[idx][:, idx], "slimgpt"))
    out = torch.zeros_like(h)
    out[idx[:, None], idx[None, :]] = sub
    return out


def greedy_prune(weight: torch.Tensor, h: torch.Tensor, groups: torch.Tensor, count: int,
                 batches: list[int] | None = None, damp: float = 0.01) -> Pruned:
    """Remove ``count`` of the column ``groups`` ([g, s]) by OBS error, ``batches[k]`` groups in
    step ``k`` (default: one per step), updating ``weight`` after each step."""
    weight = weight.to(torch.float64).clone()
    hd = damped(h.to(torch.float64), damp)
    active = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
    alive = torch.ones(groups.shape[0], dtype=torch.bool, device=h.device)
    removed, errors = [], []
    for size in batches or [1] * count:
        hinv = _active_inverse(hd, active)
        candidates = alive.nonzero().squeeze(1)
        err = group_errors(weight, hinv, groups[candidates])
        order = torch.argsort(err, stable=True)[:size]
        chosen = candidates[order]
        cols = groups[chosen].reshape(-1)
        weight = remove_columns(weight, hinv, cols)
        active[cols] = False
        alive[chosen] = False
        removed += chosen.tolist()
        errors += err[order].tolist()
    return Pruned(removed, errors, weight)
