"""Streaming float64 second moments of a projection's inputs, with the constant 1 appended."""

from __future__ import annotations

import torch


def with_one(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ([..., n]) as float64 ``[tokens, n + 1]`` with a trailing 1."""
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


class SecondMoments:
    """``H = E[x~ x~^T]`` over pruned-path inputs and, when fitting to the dense model,
    ``G = E[x~_dense x~^T]`` over the same tokens (``G`` is ``H`` for the ``self`` target)."""

    def __init__(self, channels: int, cross: bool, device: torch.device | str = "cpu"):
        size = channels + 1
        self.count = 0
        self._h = torch.zeros(size, size, dtype=torch.float64, device=device)
        self._g = torch.zeros(size, size, dtype=torch.float64, device=device) if cross else None

    def update(self, x: torch.Tensor, x_target: torch.Tensor | None = None) -> None:
        xa = with_one(x).to(self._h.device)
        self._h.addmm_(xa.T, xa)
        if self._g is not None:
            self._g.addmm_(with_one(x_target).to(self._h.device).T, xa)
        self.count += xa.shape[0]

    @property
    def h(self) -> torch.Tensor:
        return self._h / max(self.count, 1)

    @property
    def g(self) -> torch.Tensor:
        return self.h if self._g is None else self._g / max(self.count, 1)
