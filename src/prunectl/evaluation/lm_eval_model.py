"""lm-eval's ``HFLM`` around the model in memory, taking part in lm-eval's own data parallelism.

HFLM sets up ranks only when it loads a checkpoint itself (through accelerate); handed a model
instance it assumes one process.  This subclass gives lm-eval the rank and world size of
prunectl's process group and performs lm-eval's collectives on it with ``torch.distributed``:
lm-eval then builds each rank's strided share of a task's documents, pads the shorter shares so
every rank runs as many requests, and gathers the per-document metrics on rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lm_eval.models.huggingface import HFLM

from prunectl.distributed import Distributed


class GroupHFLM(HFLM):
    """HFLM on ``model`` (any ``PreTrainedModel``, prunectl's non-uniform classes included)."""

    def __init__(self, model, tokenizer, batch_size: int | str, group: Distributed) -> None:
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self.join(group)

    def join(self, group: Distributed) -> None:
        """Evaluate as a member of ``group`` from the next ``simple_evaluate`` on."""
        self.group = group
        self._rank, self._world_size = group.rank, group.world_size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0 (a 0-d tensor as one element): what
        accelerate's ``gather``, which HFLM calls here, returns."""
        if not self.group.enabled:
            return tensor
        tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.group.world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        self.group.barrier()
