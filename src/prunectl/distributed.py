"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: split work, reduce it exactly.

prunectl writes no scheduler of its own.  A launcher starts N processes with ``RANK`` and
``WORLD_SIZE`` set; each process runs the same command, takes its share of the independent work
(calibration windows, perplexity windows, search candidates) and the results are combined with
collective operations, so every rank ends with the same numbers a single process computes.
Only rank 0 writes project files.  Outside a launcher everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size`` (1 when not launched)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: a strided slice, so shares differ by at most one item."""
        return list(items[self.rank :: self.world_size])

    def shard_range(self, count: int) -> range:
        return range(self.rank, count, self.world_size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place on a copy, float64 kept as given)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s value on every rank (all ranks agree on a decision)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def current() -> Distributed:
    """The process group of this run; initialised on first use from the launcher's variables."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size())
