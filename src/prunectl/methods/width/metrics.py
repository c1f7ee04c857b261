"""Importance of o_proj / down_proj input channels, and per-head aggregation (pure tensor math).

Formulas follow FLAP (An et al., AAAI 2024) and its reference ``lib/prune.py``:

* ``IFV``  — input feature variance: ``var_j``;
* ``WIFV`` — variance weighted by the squared column norm of the output weight:
  ``var_j * sum_i W_ij^2``;
* ``WIFN`` — input norm weighted by the weight magnitude, averaged over output rows:
  ``mean_i |W_ij| * ||x_j||``;
* ``wanda-sp`` — the reference's structured Wanda baseline, the same expression as ``WIFN``;
* ``mag-sp`` — the weight column's L2 norm, no data.

``||x_j||`` here is the L2 norm over all calibration tokens; the reference's per-sample average of
squared norms differs by a constant factor per layer, which the per-layer ranking and
standardisation ignore.
"""

from __future__ import annotations

import torch

from prunectl.errors import UserError
from prunectl.methods.width.collect import stat_key
from prunectl.modeling.adapters import Adapter


def channel_metric(
    metric: str,
    weight: torch.Tensor,
    var: torch.Tensor | None = None,
    sumsq: torch.Tensor | None = None,
) -> torch.Tensor:
    """One score per input channel of ``weight`` ([out, in]); float64 on ``weight``'s device."""
    w = weight.detach().to(torch.float64)
    if metric == "IFV":
        return var.to(w.device, torch.float64).clone()
    if metric == "WIFV":
        return var.to(w.device, torch.float64) * w.pow(2).sum(dim=0)
    if metric in ("WIFN", "wanda-sp"):
        return (w.abs() * sumsq.to(w.device, torch.float64).sqrt()).mean(dim=0)
    if metric == "mag-sp":
        return w.norm(dim=0)
    raise ValueError(f"unknown metric {metric!r}")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (unbiased) standard deviation within one layer's module, as FLAP's AL-*
    structures do before pooling layers; a constant vector maps to zeros."""
    std = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / (std if std > 0 else 1.0)


def layer_scores(
    attn_metric: torch.Tensor,
    mlp_metric: torch.Tensor,
    head_dim: int,
    *,
    square_attention: bool,
    adaptive: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query-head and per-MLP-channel scores of one layer.

    FLAP squares the attention metric (``square_attention``).  Adaptive structures (``AL-*``)
    standardise each module's channel scores and average them per head, so layers and modules
    compare; uniform ones (``UL-*``, and the wanda-sp / mag-sp baselines) sum each head's channels
    and keep raw values, since they only rank within one layer.
    """
    attn = attn_metric.pow(2) if square_attention else attn_metric
    mlp = mlp_metric
    if adaptive:
        attn, mlp = standardize(attn), standardize(mlp)
        heads = attn.reshape(-1, head_dim).mean(dim=1)
    else:
        heads = attn.reshape(-1, head_dim).sum(dim=1)
    return heads.float().cpu(), mlp.float().cpu()


def model_scores(adapter: Adapter, stats: dict[str, torch.Tensor], metric: str, *,
                 square_attention: bool, adaptive: bool) -> dict[str, torch.Tensor]:
    """``layers.N.heads`` and ``layers.N.channels`` of every layer from the calibration
    statistics (a mixture-of-experts layer scores its attention only)."""
    scores = {}
    for i in range(adapter.num_layers):
        attn = _stat_metric(metric, adapter.o_proj(i).weight, stats, stat_key(i, "o_proj"))
        mlp = (torch.zeros(0) if adapter.experts(i) is not None
               else _stat_metric(metric, adapter.down_proj(i).weight, stats,
                                 stat_key(i, "down_proj")))
        heads, channels = layer_scores(attn, mlp, adapter.head_dim,
                                       square_attention=square_attention, adaptive=adaptive)
        scores[f"layers.{i}.heads"] = heads
        scores[f"layers.{i}.channels"] = channels
    return scores


def _stat_metric(metric: str, weight: torch.Tensor, stats: dict[str, torch.Tensor],
                 prefix: str) -> torch.Tensor:
    needs = {"IFV": "var", "WIFV": "var", "WIFN": "sumsq", "wanda-sp": "sumsq"}.get(metric)
    if needs and f"{prefix}.{needs}" not in stats:
        raise UserError(
            f"calibration statistics lack {prefix}.{needs}; re-run `prunectl calibrate --force`"
        )
    return channel_metric(metric, weight, var=stats.get(f"{prefix}.var"),
                          sumsq=stats.get(f"{prefix}.sumsq"))
