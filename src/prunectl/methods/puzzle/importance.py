"""Which units a puzzle variant keeps: one importance order per block, most important first.

A unit is a KV group of attention (a KV head with its query heads: the ``o_proj`` input channels
of those heads, their q rows and the group's k and v rows; MHA: one head) or one MLP channel
(its ``down_proj`` column and gate/up rows).  Orders are nested: the variant keeping ``g`` units
keeps the first ``g``.  All three come from the dense model's weights and, where they need data,
from ``H = E[x~ x~^T]`` of the projection's dense input with a constant 1 appended:

* ``flap`` — FLAP's WIFV fluctuation, ``var_j * ||W[:, j]||^2`` per input channel with
  ``var_j = E[x_j^2] - E[x_j]^2`` read off ``H``; a KV group sums its channels.  Deviation from
  FLAP: no squaring or standardisation of the attention metric, which only matters when layers
  or modules are compared, never within one block.
* ``magnitude`` — the L2 norm of all of the unit's weights.
* ``slimgpt`` — the reverse of SlimGPT's greedy OBS removal order on the damped ``H`` (heads one
  at a time, channels in its dynamic batches): the unit removed last is the most important.
"""

from __future__ import annotations

import torch

from prunectl.methods.width.metrics import channel_metric
from prunectl.methods.width.obs import greedy_prune, mlp_batches
from prunectl.methods.width.units import LayerShape, head_unit_members
from prunectl.modeling.adapters import Adapter


def unit_columns(adapter: Adapter, i: int, block: str) -> torch.Tensor:
    """``[units, s]``: the ``o_proj`` (``attn``) or ``down_proj`` (``mlp``) input channels of each
    unit of layer ``i``; a KV group's query heads are consecutive (HF repeats KV heads so)."""
    if block == "mlp":
        return torch.arange(adapter.intermediate_size(i)).reshape(-1, 1)
    heads, kv, hd = adapter.num_heads(i), adapter.num_kv_heads(i), adapter.head_dim
    shape = LayerShape(heads, kv, hd, adapter.intermediate_size(i), "kv_group", 0, 0)
    members = head_unit_members(shape, torch.zeros(heads))
    return torch.tensor([[h * hd + d for h in m for d in range(hd)] for m in members])


def _descending(scores: torch.Tensor) -> torch.Tensor:
    """Most important first; ties keep the lower index first."""
    return torch.argsort(scores, descending=True, stable=True).cpu()


def flap_scores(weight: torch.Tensor, h: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """WIFV per unit: the sum over its channels of ``var_j * ||W[:, j]||^2`` (``weight`` the
    augmented ``[W, b]``, ``h`` the augmented second moment)."""
    mean = h[:-1, -1]
    var = (h.diagonal()[:-1] - mean.pow(2)).clamp_min(0)
    metric = channel_metric("WIFV", weight[:, :-1], var)
    return metric[columns.to(metric.device)].sum(dim=1)


def magnitude_scores(adapter: Adapter, i: int, block: str, columns: torch.Tensor) -> torch.Tensor:
    """L2 norm of every weight a unit owns: its output-projection columns and the rows that
    produce them (q rows of its heads and its KV head's k and v rows; gate and up rows)."""
    def sq(w: torch.Tensor, dim: int) -> torch.Tensor:
        return w.detach().to(torch.float64).pow(2).sum(dim=dim).cpu()

    if block == "mlp":
        m = adapter.mlp_weights(i)
        total = sq(m.down, 0) + sq(m.gate, 1) + sq(m.up, 1)
        return total[columns].sum(dim=1).sqrt()
    a = adapter.attention_weights(i)
    own = (sq(a.o, 0) + sq(a.q, 1))[columns].sum(dim=1)
    kv = (sq(a.k, 1) + sq(a.v, 1)).reshape(columns.shape[0], -1).sum(dim=1)
    return (own + kv).sqrt()


def slimgpt_order(weight: torch.Tensor, h: torch.Tensor, columns: torch.Tensor,
                  damp: float) -> torch.Tensor:
    """Reverse of the greedy OBS removal of every unit (``damp`` as ``reconstruct_damp``)."""
    units = columns.shape[0]
    batches = mlp_batches(units) if columns.shape[1] == 1 else None
    pruned = greedy_prune(weight, h, columns.to(h.device), units, batches, damp=damp)
    return torch.tensor(pruned.removed[::-1], dtype=torch.long)


def unit_order(importance: str, adapter: Adapter, i: int, block: str, weight: torch.Tensor,
               h: torch.Tensor, damp: float) -> torch.Tensor:
    """int64 [units]: layer ``i``'s ``attn`` / ``mlp`` units, most important first."""
    columns = unit_columns(adapter, i, block)
    if importance == "flap":
        return _descending(flap_scores(weight, h, columns))
    if importance == "magnitude":
        return _descending(magnitude_scores(adapter, i, block, columns))
    if importance == "slimgpt":
        return slimgpt_order(weight, h, columns, damp)
    raise ValueError(f"unknown importance {importance!r}")
