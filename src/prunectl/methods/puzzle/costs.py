"""What each variant of the library costs: parameters, KV-cache bytes and FLOPs per token.

Every number comes from :mod:`prunectl.modeling.cost` on the model's
:class:`~prunectl.modeling.structure.Structure` with one residual block changed, so the solver
counts exactly what ``apply`` leaves (a removed block takes its norm with it).  Costs are
additive over blocks: the embeddings, the final norm and the LM head are the same for every
choice and appear only in the dense totals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from prunectl.modeling import cost
from prunectl.modeling.structure import LayerStructure, Structure

#: the budgets a target can set, in the order the solver lists them
KINDS = ("params", "kv_cache", "flops")


@dataclass(frozen=True)
class Costs:
    """``attn[kind]`` [L, G + 1] (column ``g``: keep ``g`` KV groups), ``mlp[kind]`` [L, W]
    (column ``w``: the library's ``mlp.channels[l, w]``), ``dense[kind]`` the dense model's
    total (the fixed parts included)."""

    attn: dict[str, np.ndarray]
    mlp: dict[str, np.ndarray]
    dense: dict[str, int]

    def total(self, kind: str, attn: list[int], mlp: list[int]) -> int:
        """The model's ``kind`` when layer ``l`` takes attention option ``attn[l]`` and MLP
        option ``mlp[l]`` (column indices)."""
        return self.fixed(kind) + int(sum(self.attn[kind][l, attn[l]] + self.mlp[kind][l, mlp[l]]
                                          for l in range(len(attn))))

    def fixed(self, kind: str) -> int:
        """The part no choice changes (embeddings, final norm, LM head)."""
        return self.dense[kind] - int(self.attn[kind][:, -1].sum() + self.mlp[kind][:, -1].sum())


def _block(s: Structure, layer: LayerStructure, i: int, kind: str, bytes_per_value: int) -> int:
    """One block's ``kind`` in layer ``i``: ``layer`` holds only that block (the other removed)."""
    shaped = replace(s, layers=s.layers[:i] + (layer,) + s.layers[i + 1:])
    if kind == "params":
        return sum(cost.block_parameters(shaped, i).values())
    if kind == "kv_cache":
        return cost.layer_kv_cache_bytes(shaped, layer, bytes_per_value)
    return cost.layer_flops(shaped, layer)


def _dense(s: Structure, bytes_per_value: int) -> dict[str, int]:
    dense = cost.account(s, bytes_per_value=bytes_per_value)
    return {"params": dense.params["total"], "kv_cache": dense.kv_cache_bytes,
            "flops": dense.flops}


def variant_costs(s: Structure, channels: np.ndarray, bytes_per_value: int = 2,
                  biases: bool = False) -> Costs:
    """Costs of every variant of a dense structure ``s``; ``channels`` [L, W] are the MLP width
    options (the library's ``mlp.channels``).  Attention option ``g`` keeps ``g`` KV groups with
    all their query heads.  ``biases``: a narrowed ``o_proj``/``down_proj`` gets a bias (what
    ``reconstruct: bias`` and ``least_squares`` write), as ``with_plan``'s ``added_biases``
    counts it."""
    attn = {k: np.zeros((len(s.layers), s.layers[0].kv_heads + 1), dtype=np.int64) for k in KINDS}
    mlp = {k: np.zeros(channels.shape, dtype=np.int64) for k in KINDS}
    for i, dense in enumerate(s.layers):
        group = dense.heads // dense.kv_heads
        no_mlp = replace(dense, mlp=False, intermediate=0)
        no_attn = replace(dense, attention=False, heads=0, kv_heads=0)
        for g in range(dense.kv_heads + 1):
            layer = replace(no_mlp, attention=g > 0, heads=g * group, kv_heads=g,
                            o_bias=dense.o_bias or (biases and 0 < g < dense.kv_heads))
            for k in KINDS:
                attn[k][i, g] = _block(s, layer, i, k, bytes_per_value)
        for w, c in enumerate(channels[i].tolist()):
            layer = replace(no_attn, mlp=c > 0, intermediate=int(c),
                            down_bias=dense.down_bias or (biases and 0 < c < dense.intermediate))
            for k in KINDS:
                mlp[k][i, w] = _block(s, layer, i, k, bytes_per_value)
    return Costs(attn, mlp, _dense(s, bytes_per_value))
