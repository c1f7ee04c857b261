"""The variant grid of ``method: puzzle``: which kept-unit counts the library scores per block.

Attention keeps ``g = 0 .. G`` KV groups (every count: ``G`` is small); the MLP keeps ``0``, each
``round(f * C)`` for ``f`` in ``method.mlp_widths`` and ``C`` channels, snapped to the alignment.  ``0`` is the block removed
and the largest count the dense block, so "remove" and "keep" are always choices.
"""

from __future__ import annotations

from prunectl.modeling.alignment import snap


def attention_kept(groups: int) -> list[int]:
    """Kept KV groups of each attention variant, ascending (column ``g`` of ``attn.score``)."""
    return list(range(groups + 1))


def mlp_kept(channels: int, widths: list[float], multiple: int = 1) -> list[int]:
    """Kept channels of each MLP variant: 0, ``round(f * channels)`` for each fraction snapped
    to ``multiple`` (``modeling.alignment``), all of them; de-duplicated (a narrow MLP rounds
    several fractions alike) and ascending."""
    return sorted({0, channels, *(snap(round(f * channels), channels, multiple) for f in widths)})
