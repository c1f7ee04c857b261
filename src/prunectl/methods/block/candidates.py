"""Search candidates as spans of residual *units* (their names and sizes: ``removal_order``).

A decoder layer ``i`` holds two residual units, attention (unit ``2i``) and MLP (unit ``2i+1``).
Every candidate bypasses a contiguous span of units: ``layers.i.attn`` is ``[2i, 2i+1)``,
``layers.i.mlp`` is ``[2i+1, 2i+2)`` and a whole layer ``layers.i`` is ``[2i, 2i+2)``.  Boundary
``u`` is the residual stream entering unit ``u``; a candidate's forward starts at the boundary of
its first unit, which is what makes prefix caching work.
"""

from __future__ import annotations

from prunectl.plan import parse_block_name


def unit_span(name: str, num_layers: int) -> tuple[int, int]:
    """The half-open range of residual units a candidate bypasses."""
    index, kind = parse_block_name(name, num_layers)
    start = 2 * index + (1 if kind == "mlp" else 0)
    end = 2 * index + (1 if kind == "attn" else 2)
    return start, end
