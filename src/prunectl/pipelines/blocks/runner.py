"""Running a model unit by unit on batches of calibration windows, counting what it runs.

The search never edits the model: a bypassed block is simply not run.  Every residual unit
(attention or MLP block, see ``methods/block/candidates``) goes through the architecture adapter, so any
supported family works, and a model whose blocks were already removed physically is searched
further without special cases (the adapter passes a removed block's input through).

A method gets the runner from its pipeline as :class:`Units` (``inputs.units``), makes runners
there, and each runner its prefix cache (:meth:`UnitRunner.prefix_cache`) and NLL bound
(:meth:`UnitRunner.lower_bound`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from prunectl import distributed
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device
from prunectl.pipelines.blocks.bound import NllLowerBound
from prunectl.pipelines.blocks.cache import BoundaryCache, plan_cache

#: tokens per LM-head chunk: bounds the logits held at once (vocab x chunk floats)
DEFAULT_CHUNK_TOKENS = 2048


class UnitRunner:
    """One model and its calibration windows, split into batches of ``batch_size`` windows."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokens: torch.Tensor,
        batch_size: int,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ):
        self.adapter = Adapter(model)
        self.num_units = 2 * self.adapter.num_layers
        device = execution_device(model)
        self.batches = [b.to(device) for b in tokens.split(max(1, batch_size))]
        self.predicted_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        self.chunk_tokens = chunk_tokens
        #: rows (windows) pushed through each kind of unit, and through the LM head
        self.counts: Counter[str] = Counter()

    @property
    def device(self) -> torch.device:
        return self.batches[0].device

    def embed(self, b: int) -> torch.Tensor:
        return self.adapter.embed_tokens(self.batches[b])

    def run(self, hidden: torch.Tensor, start: int, stop: int, skip: set[int]) -> torch.Tensor:
        """Residual units ``start .. stop-1`` on ``hidden``, leaving out the units in ``skip``;
        a whole decoder layer runs through the model's own layer module."""
        rows = hidden.shape[0]
        unit = start
        while unit < stop:
            layer = unit // 2
            whole = unit % 2 == 0 and unit + 1 < stop and not {unit, unit + 1} & skip
            if whole:
                inputs = self.adapter.block_inputs(hidden)
                hidden = self.adapter.layer_forward(layer, hidden, inputs)
                self.counts["attn"] += rows
                self.counts["mlp"] += rows
                unit += 2
                continue
            if unit not in skip:
                if unit % 2 == 0:
                    inputs = self.adapter.block_inputs(hidden)
                    hidden = self.adapter.attention_block(layer, hidden, inputs)
                    self.counts["attn"] += rows
                else:
                    hidden = self.adapter.mlp_block(layer, hidden)
                    self.counts["mlp"] += rows
            unit += 1
        return hidden

    def prefix_cache(self, mode: str = "auto", budget_gb: float | None = None,
                     directory: Path | None = None) -> BoundaryCache:
        """An empty prefix cache of this runner's boundaries (``rebuild`` fills it), placed by
        :func:`~prunectl.pipelines.blocks.cache.plan_cache`."""
        plan = plan_cache(mode, budget_gb, self, self.adapter.model.dtype, directory)
        return BoundaryCache(self, plan)

    def lower_bound(self, topk: int) -> NllLowerBound:
        """The NLL lower bound on this runner's windows (``refresh`` fills it)."""
        return NllLowerBound(self, topk)

    def total_nll(self, skip: set[int], shard: bool = False) -> float:
        """Summed next-token NLL of every window through the units not in ``skip``, each batch
        run from its embedding.  ``shard``: under ``torchrun`` each rank runs every
        ``world_size``-th batch and the float64 sums are added over ranks (one process adds
        the batches in order, as unsharded)."""
        group = distributed.current() if shard else distributed.Distributed()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in group.shard(range(len(self.batches))):
            hidden = self.run(self.embed(b), 0, self.num_units, skip)
            total += float(self.nll(hidden, b).sum())
        return float(group.sum(total))

    def nll(self, hidden: torch.Tensor, b: int, on_logits=None) -> torch.Tensor:
        """Summed next-token NLL of each window of batch ``b`` (float64, one value per row);
        ``on_logits`` sees the logits chunks (see ``token_nll_sum``)."""
        from prunectl.evaluation.perplexity import token_nll_sum

        self.counts["head"] += hidden.shape[0]
        nll = token_nll_sum(
            hidden,
            self.adapter.final_norm,
            self.adapter.head_logits,
            self.batches[b],
            self.chunk_tokens,
            on_logits,
        )
        return nll.double()


@dataclass(frozen=True)
class Units:
    """The block-unit runner as a pipeline hands it to a method (``inputs.units``): the model
    and the step's windows, in batches of ``batch_size``."""

    model: torch.nn.Module
    tokens: torch.Tensor
    batch_size: int

    def runner(self, windows: int | None = None, batch_size: int | None = None) -> UnitRunner:
        """A runner on the first ``windows`` windows (None: all) in batches of ``batch_size``
        (None: this one's)."""
        tokens = self.tokens if windows is None else self.tokens[:windows]
        return UnitRunner(self.model, tokens, batch_size or self.batch_size)
