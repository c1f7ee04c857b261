"""The alignment rule for kept widths: every width-changing method asks this module which multiple
its kept MLP channels (and magnitude's hidden size) snap to.

Why: matrix kernels run an odd width slower than the next aligned one.  llama.cpp's CPU F16
kernels want inner dimensions in multiples of 16, q8_0 and every block quantization multiples of
32 (a tensor that is not stays F16), and GPU kernels (cuBLAS, vLLM, TensorRT-LLM) 64-128.

The rule (also in README "Aligned widths"):

- ``method.round_to`` unset: the alignment is 64, halved (32, 16, ...) while the narrowest dense
  width the method prunes holds fewer than :data:`MIN_STEPS` aligned steps, so a small model
  still has widths to choose from (hidden 64 / intermediate 96 test models get 16; SmolLM2's
  576 / 1,536 and larger models keep 64).  For a hidden size that must also divide by the kept
  query-head count, the steps count the combined multiple.
- ``method.round_to: N`` is used as given (1 keeps the exact cut of the papers); one wider than
  a layer's MLP is refused.
- Heads and KV groups are always whole, so attention widths are multiples of ``head_dim``.
- Adaptive methods (flap, wanda-sp, mag-sp, taylor, slimgpt AL-AM) round each layer's kept
  count down or up, strongest returning channels first, keeping the best-ranked channels; the
  removed parameters stay within half a step (alignment x the largest per-channel parameter
  cost / 2) of the unrounded cut.  A cut that keeps the same width in every layer (FLAP's
  UL-UM / UL-MM, mag-sp's default) stays uniform, so the model stays a stock model class: the
  common width goes to the multiple below or above, within half a step of all layers together.  Ratio-driven methods (magnitude, slimgpt's ipr / uniform)
  snap each count to the nearest multiple and re-solve their ratio, so the target is met as
  closely as whole steps allow.  Puzzle's MLP variants are the listed fractions snapped to the
  nearest multiple.  REAP removes whole experts and changes no width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DEFAULT_ALIGNMENT = 64
MIN_STEPS = 4


def alignment(round_to: int | None, widths: Iterable[int], factor: int = 1) -> int:
    """The multiple kept widths snap to: ``round_to`` when set, else :data:`DEFAULT_ALIGNMENT`
    halved while ``lcm(multiple, factor) * MIN_STEPS`` exceeds the narrowest non-zero width."""
    if round_to is not None:
        return round_to
    narrowest = min((w for w in widths if w > 0), default=0)
    multiple = DEFAULT_ALIGNMENT
    while multiple > 1 and math.lcm(multiple, factor) * MIN_STEPS > narrowest:
        multiple //= 2
    return multiple


def snap(kept: int, full: int, multiple: int) -> int:
    """``kept`` of ``full`` units to the nearest multiple (ties to the even multiple, as Python's
    ``round``), at least one multiple when anything is kept, at most the largest multiple in
    ``full``; ``full`` and 0 stay."""
    if kept >= full or kept == 0 or multiple == 1:
        return kept
    return min(max(multiple * round(kept / multiple), multiple), full // multiple * multiple)
