"""Streaming second moments of a projection's inputs, with the constant 1 appended."""

from __future__ import annotations

import torch


def with_one(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ([..., n]) as ``[tokens, n + 1]`` with a trailing 1, in float32 (float64
    inputs stay float64: never below the activations' own precision)."""
    x = x.reshape(-1, x.shape[-1])
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


class SecondMoments:
    """``H = E[x~ x~^T]`` over pruned-path inputs and, when fitting to the dense model,
    ``G = E[x~_dense x~^T]`` over the same tokens (``G`` is ``H`` for the ``self`` target).

    Each batch's products ``x~^T x~`` are formed in float32 (the activations carry no more
    precision; about twice as fast as float64 on CPU) and summed into float64 accumulators, so
    rounding does not grow with the number of batches: on realistic activations (four decades
    of scale, outlier channels) ``H`` equals the all-float64 computation to better than 1e-6
    relative (2e-8 measured; ``tests/test_reconstruct.py``)."""

    def __init__(self, channels: int, cross: bool, device: torch.device | str = "cpu"):
        size = channels + 1
        self.count = 0
        self._h = torch.zeros(size, size, dtype=torch.float64, device=device)
        self._g = torch.zeros(size, size, dtype=torch.float64, device=device) if cross else None

    def update(self, x: torch.Tensor, x_target: torch.Tensor | None = None) -> None:
        xa = with_one(x).to(self._h.device)
        self._h += xa.T @ xa
        if self._g is not None:
            self._g += with_one(x_target).to(self._h.device).T @ xa
        self.count += xa.shape[0]

    @property
    def h(self) -> torch.Tensor:
        return self._h / max(self.count, 1)

    @property
    def g(self) -> torch.Tensor:
        return self.h if self._g is None else self._g / max(self.count, 1)
