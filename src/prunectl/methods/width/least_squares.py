"""Least-squares reconstruction of a projection that lost input columns (pure; no model, no I/O).

A projection ``y = W x + b`` (``o_proj`` after heads go, ``down_proj`` after MLP channels go) keeps
the input columns ``K``.  With the input augmented by a constant, ``x~ = [x; 1]`` and
``W~ = [W, b]``, the kept weights and the bias come out of one solve

    W~'_K = (W~ G_{:,K} + lambda W~_K) (H_KK + lambda I_K)^-1,   H = E[x~ x~^T] (pruned inputs),
                                       G = E[x~_t x~^T] (target inputs x pruned inputs)

which minimises ``E||W~ x~_t - W~'_K x~_K||^2 + lambda ||W'_K - W_K||^2``.  ``x_t`` is the input
the target output is computed from: the dense model's own input for the same token (``dense``) or
the pruned input itself (``self``, then ``G = H``).  ``lambda`` is ``damp`` times the mean diagonal
of ``H`` over the real input channels (GPTQ / SparseGPT's ``percdamp``); the constant column is not
damped, so the bias is the unpenalised intercept.  Everything is float64 and solved with a Cholesky
factor, never an explicit inverse.

Deviation from the issue's ``W H_{:,K} (H_KK + lambda I)^-1``: the ridge pulls the kept weights
toward their dense values, not toward zero.  That is what damping ``H`` means in OBS / SparseGPT
(``(W - W') (H + lambda I) (W - W')^T``), so SlimGPT's updates and this solve agree exactly, and a
large ``damp`` degrades to plain slicing instead of shrinking the layer; at ``damp: 0`` both are
the plain least-squares optimum.
"""

from __future__ import annotations

import torch

from prunectl.errors import UserError


def augmented(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[W, b]`` in float64 (``b`` zero when the projection has none)."""
    w = weight.detach().to(torch.float64)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None \
        else bias.detach().to(w.device, torch.float64)
    return torch.cat([w, b[:, None]], dim=1)


def damping(h: torch.Tensor, damp: float) -> float:
    """``damp`` x mean diagonal of ``H`` over the real channels (the last one is the constant)."""
    return damp * float(h.diagonal()[:-1].mean())


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """``H + lambda I`` on the real channels only."""
    out = h.clone()
    idx = torch.arange(h.shape[0] - 1, device=h.device)
    out[idx, idx] += damping(h, damp)
    return out


def cholesky(h: torch.Tensor, what: str) -> torch.Tensor:
    """Lower Cholesky factor, or one clear error (an input channel that never varies, say)."""
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise UserError(f"{what}: the calibration input covariance is singular; raise "
                        "method.reconstruct_damp (e.g. 0.01) or calibrate on more tokens")
    return factor


def solve_kept(
    weight: torch.Tensor, h: torch.Tensor, g: torch.Tensor, kept: torch.Tensor, damp: float,
    what: str = "least squares",
) -> torch.Tensor:
    """The new ``[W'_K, b']`` ([out, |K| + 1], float64) for augmented ``weight`` ([out, n + 1]).

    ``h``/``g``: ``[n + 1, n + 1]`` second moments (``g`` rows: target inputs); ``kept``: indices
    of the kept real channels.  ``lambda`` comes from the full ``H`` so that removing more
    channels does not change the penalty on the rest (as SparseGPT's damping).
    """
    n = h.shape[0] - 1
    cols = torch.cat([kept.to(h.device, torch.long), torch.tensor([n], device=h.device)])
    lam = damping(h, damp)
    h_kk = h.index_select(0, cols).index_select(1, cols).clone()
    idx = torch.arange(len(cols) - 1, device=h.device)
    h_kk[idx, idx] += lam
    w = weight.to(h.device, torch.float64)
    rhs = w @ g.index_select(1, cols)  # [out, |K|+1]
    rhs[:, :-1] += lam * w.index_select(1, cols[:-1])
    factor = cholesky(h_kk, what)
    return torch.cholesky_solve(rhs.T, factor).T
