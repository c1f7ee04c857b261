"""Streaming per-channel moments of a linear layer's input, numerically stable.

FLAP needs each input channel's mean (bias compensation) and variance (IFV/WIFV); wanda-sp and
WIFN need its sum of squares.  Calibration sets are too large to hold every activation, so batches
are merged as they come with Chan et al.'s parallel update in float64.  (The reference's
``BiasGPT.add_batch`` keeps a per-sample running estimate in float32 whose variance is off by a
constant factor; the scores it feeds are standardised or ranked per layer, so the exact moments
used here rank the same way.)
"""

from __future__ import annotations

import torch

from prunectl.distributed import Distributed


class RunningMoments:
    """Count, mean, sum of squared deviations (M2) and sum of squares per channel."""

    def __init__(self, channels: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(channels, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Merge a batch of rows ``x`` ([..., channels]); every leading dimension is a token."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(dim=0)
        batch_m2 = (x - batch_mean).pow(2).sum(dim=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta.pow(2) * (self.count * n / total)
        self.sumsq += x.pow(2).sum(dim=0)
        self.count = total

    def merge_ranks(self, group: Distributed) -> None:
        """Combine every rank's moments in place (Chan's merge written as two float64 sums).

        The global mean is ``sum(n_r * mean_r) / N``; the global M2 is ``sum(M2_r + n_r *
        (mean_r - mean)**2)``, which is Chan's pairwise update unrolled over ranks: no
        ``sumsq - N * mean**2`` cancellation.  Every rank gets bit-identical results (the same
        all-reduce); against one process they differ only in float64 summation order.
        """
        if not group.enabled:
            return
        counts = group.sum(torch.tensor([float(self.count)], dtype=torch.float64,
                                        device=self.mean.device))
        total = int(counts.item())
        mean = group.sum(self.mean * self.count) / max(total, 1)
        self.m2 = group.sum(self.m2 + (self.mean - mean).pow(2) * self.count)
        self.sumsq = group.sum(self.sumsq)
        self.mean, self.count = mean, total

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance over tokens (``torch.var``'s convention)."""
        return self.m2 / max(self.count - 1, 1)

    def as_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat tensors for ``calibration/stats.safetensors``, moved to the CPU."""
        return {
            f"{prefix}.count": torch.tensor([float(self.count)], dtype=torch.float64),
            f"{prefix}.mean": self.mean.cpu(),
            f"{prefix}.var": self.var.cpu(),
            f"{prefix}.sumsq": self.sumsq.cpu(),
        }
