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
from collections.abc import Callable

from prunectl.methods.width.units import LayerShape
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


def solve_counts(shapes: list[LayerShape], weights: list[float], budget: float,
                 removed: Callable[[list[tuple[int, int]]], int], min_kept: int = 1,
                 multiple: int = 1, steps: int = 4000) -> tuple[list[tuple[int, int]], float]:
    """The counts (and scale) on a fine grid of scales whose ``removed(counts)`` parameters
    come closest to ``budget``."""
    top = 1.0 / min(weights)
    best = None
    for k in range(steps + 1):
        scale = top * k / steps
        counts = counts_at(shapes, weights, scale, min_kept, multiple)
        gap = abs(removed(counts) - budget)
        if best is None or gap < best[0]:
            best = (gap, counts, scale)
    return best[1], best[2]
