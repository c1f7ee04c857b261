"""The prefix cache: the residual stream at every unit boundary of the current model.

A candidate at unit ``s`` leaves units ``0 .. s-1`` unchanged, so its forward starts from the
cached boundary ``s``.  After a removal at ``s`` only boundaries after ``s`` change, so the cache
is rebuilt from ``s`` on, never from the embedding.  When the whole cache does not fit the
memory budget it spills to CPU memory or keeps every ``stride``-th boundary and recomputes the
ones in between from the nearest kept one (still exact, only slower).  With ``cache: disk`` the
boundaries live in memory-mapped files under a directory (the project's ``search/cache/``), for
models whose boundaries fit neither device nor host memory; the files are scratch, removed when
the search ends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the runner makes caches and bounds: it imports this module
    from prunectl.pipelines.blocks.runner import UnitRunner


@dataclass(frozen=True)
class CachePlan:
    location: torch.device
    stride: int  # keep boundaries 0, stride, 2*stride, ...
    bytes_needed: int  # the whole cache at stride 1
    directory: Path | None = None  # memory-mapped files there instead of memory


def _host_available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _default_budget(device: torch.device) -> float:
    """Half of what is free where the cache would live."""
    if device.type == "cuda":
        return 0.5 * torch.cuda.mem_get_info(device)[0]
    return 0.5 * _host_available_bytes()


def plan_cache(
    mode: str, budget_gb: float | None, runner: UnitRunner, dtype: torch.dtype,
    directory: Path | None = None,
) -> CachePlan:
    """Where the cache lives and how sparse it is.

    ``auto``: on the device when it fits ``budget_gb`` (default: half the free device memory),
    else in host memory when the device is an accelerator and half the free host memory holds it,
    else sparse on the device, keeping as many boundaries as the budget holds.
    """
    device = runner.device
    windows = sum(b.shape[0] for b in runner.batches)
    per_boundary = windows * runner.batches[0].shape[1] * runner.adapter.hidden_size
    per_boundary *= torch.empty(0, dtype=dtype).element_size()
    needed = per_boundary * runner.num_units
    budget = budget_gb * 1e9 if budget_gb is not None else _default_budget(device)
    cpu = torch.device("cpu")

    def sparse(minimum: int) -> CachePlan:
        fitting = max(1, int(budget // per_boundary))
        return CachePlan(device, max(minimum, math.ceil(runner.num_units / fitting)), needed)

    if mode == "disk":
        if directory is None:
            raise ValueError("cache: disk needs a directory")
        return CachePlan(cpu, 1, needed, Path(directory))
    if mode == "device":
        return CachePlan(device, 1, needed)
    if mode == "cpu":
        return CachePlan(cpu, 1, needed)
    if mode == "sparse":
        return sparse(2)
    if needed <= budget:
        return CachePlan(device, 1, needed)
    if device.type != "cpu" and needed <= 0.5 * _host_available_bytes():
        return CachePlan(cpu, 1, needed)
    return sparse(1)


class BoundaryCache:
    """Boundary hidden states of the current model, per batch of windows."""

    def __init__(self, runner: UnitRunner, plan: CachePlan):
        self.runner = runner
        self.plan = plan
        self.store: list[dict[int, torch.Tensor]] = [{} for _ in runner.batches]
        self.files: list[torch.Tensor] = []  # per batch [units, rows, seqlen, hidden], disk only

    def _kept(self, unit: int) -> bool:
        return unit % self.plan.stride == 0

    def _put(self, b: int, unit: int, hidden: torch.Tensor) -> None:
        if self.plan.directory is None:
            self.store[b][unit] = hidden.to(self.plan.location)
            return
        if not self.files:
            self._open_files(hidden.dtype)
        self.files[b][unit].copy_(hidden)
        self.store[b][unit] = self.files[b][unit]

    def _open_files(self, dtype: torch.dtype) -> None:
        """One memory-mapped file per batch, sized for every boundary (written as they come)."""
        self.plan.directory.mkdir(parents=True, exist_ok=True)
        width = self.runner.adapter.hidden_size
        for b, batch in enumerate(self.runner.batches):
            shape = (self.runner.num_units, *batch.shape, width)
            path = self.plan.directory / f"batch-{b}.bin"
            count = math.prod(shape)
            with open(path, "wb") as handle:
                handle.truncate(count * torch.empty((), dtype=dtype).element_size())
            self.files.append(torch.from_file(str(path), shared=True, size=count,
                                              dtype=dtype).view(shape))

    def close(self) -> None:
        """Drop the cache; with ``disk`` delete its files."""
        self.store = [{} for _ in self.runner.batches]
        self.files = []
        if self.plan.directory is not None:
            for b in range(len(self.runner.batches)):
                (self.plan.directory / f"batch-{b}.bin").unlink(missing_ok=True)

    def hidden(self, b: int, unit: int, removed: set[int]) -> torch.Tensor:
        """Boundary ``unit`` of batch ``b``, recomputed from the nearest kept one if needed."""
        kept = unit - unit % self.plan.stride
        hidden = self.store[b][kept].to(self.runner.device)
        return self.runner.run(hidden, kept, unit, removed)

    def rebuild(self, removed: set[int], start: int = 0) -> None:
        """Recompute the kept boundaries after ``start`` for the model without ``removed``."""
        runner = self.runner
        for b in range(len(runner.batches)):
            hidden = runner.embed(b) if start == 0 else self.hidden(b, start, removed)
            if start == 0:
                self._put(b, 0, hidden)
            for unit in range(start + 1, self.last_kept + 1):
                hidden = runner.run(hidden, unit - 1, unit, removed)
                if self._kept(unit):
                    self._put(b, unit, hidden)

    @property
    def last_kept(self) -> int:
        return max(u for u in range(self.runner.num_units) if self._kept(u))

    def final(self, b: int, removed: set[int]) -> torch.Tensor:
        """Last hidden states of the current model (before the final norm) for batch ``b``."""
        hidden = self.hidden(b, self.last_kept, removed)
        return self.runner.run(hidden, self.last_kept, self.runner.num_units, removed)
