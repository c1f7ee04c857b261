"""How many head units and MLP channels each layer gives up (pure; shapes in, counts out).

``ipr`` — SlimGPT's Incremental Pruning Ratio: layer ``i`` of ``L`` is pruned at
``r_i = r_first + (r_last - r_first) * ln(1 + i) / ln(L)``, rising logarithmically with depth
(the reference's ``log_increase``, whose ``ln(32)`` is Llama-7B's depth).  The reference sets
``r_first`` / ``r_last`` by hand (0.06 / 0.3); here their ratio is ``ipr_first`` (default 0.2, the
same shape) and the scale is solved so the removed parameters come closest to the target.
``uniform`` — one ratio everywhere.  (``AL-AM`` — FLAP's adaptive counts — is computed by the
method from FLAP's scores.)  A layer removes ``round(r_i * units)`` head units and
``round(r_i * channels)`` channels, keeping at least ``min_kept`` of each; the kept channels then
snap to the nearest multiple of the alignment (``modeling.alignment``; 1: unchanged).
"""

from __future__ import annotations

import math

from prunectl.methods.width_common import LayerShape
from prunectl.modeling.alignment import snap


def shape_weights(allocation: str, layers: int, first: float) -> list[float]:
    """Relative per-layer ratios (the last layer is 1)."""
    if allocation == "uniform" or layers == 1:
        return [1.0] * layers
    return [first + (1 - first) * math.log(1 + i) / math.log(layers) for i in range(layers)]


def counts_at(shapes: list[LayerShape], weights: list[float], scale: float,
              min_kept: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(head units, channels) removed per layer at ratio ``scale * weight``."""
    out = []
    for s, w in zip(shapes, weights):
        r = min(scale * w, 1.0)
        heads = min(round(r * s.num_head_units), max(s.num_head_units - min_kept, 0))
        channels = min(round(r * s.intermediate), max(s.intermediate - min_kept, 0))
        channels = s.intermediate - snap(s.intermediate - channels, s.intermediate, multiple)
        out.append((heads, channels))
    return out


def removed_params(shapes: list[LayerShape], counts: list[tuple[int, int]], hidden: int,
                   biased: list[tuple[bool, bool]]) -> int:
    """Parameters the counts remove, less the bias a pruned projection without one gains
    (``biased``: per layer, whether ``o_proj`` / ``down_proj`` already have one)."""
    total = 0
    for s, (heads, channels), (o_bias, down_bias) in zip(shapes, counts, biased):
        total += heads * s.head_unit_cost + channels * s.channel_cost
        total -= hidden * ((heads > 0 and not o_bias) + (channels > 0 and not down_bias))
    return total


def solve_counts(shapes: list[LayerShape], weights: list[float], budget: float, hidden: int,
                 biased: list[tuple[bool, bool]], min_kept: int = 1, multiple: int = 1,
                 steps: int = 4000) -> tuple[list[tuple[int, int]], float]:
    """The counts (and scale) on a fine grid of scales whose removal is closest to ``budget``."""
    top = 1.0 / min(weights)
    best = None
    for k in range(steps + 1):
        scale = top * k / steps
        counts = counts_at(shapes, weights, scale, min_kept, multiple)
        gap = abs(removed_params(shapes, counts, hidden, biased) - budget)
        if best is None or gap < best[0]:
            best = (gap, counts, scale)
    return best[1], best[2]
