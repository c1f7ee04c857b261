"""The layer-by-layer pipeline: calibration windows pushed through a model one decoder layer at a
time, on cached inputs.

Block Influence (ShortGPT), the FLAP / wanda-sp statistics and the sequential reconstruction
(SlimGPT too) all need every layer's inputs on every calibration window.  They share this pass:
the windows are embedded once, each layer (or one of its residual blocks) runs through the
model's own modules on every batch (rotary tables and masks built once per batch shape, see
``Adapter.block_inputs``), and its outputs replace its inputs.  Only one layer's activations,
``[windows, seqlen, hidden]`` per stream, are held at a time; they stay on the execution device (in
host memory only while layers stream from there), so nothing is copied or cast between layers.

A pass may carry several *streams* of the same windows: the reconstruction keeps a pruned one
(earlier layers already pruned) beside the dense one, both starting from the same embeddings.
Callers run it under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device, is_streamed

#: sees (batch index, layer input, layer output) for every batch of a layer
BatchCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
#: (batch index, that batch of each chosen stream on the device) -> each stream's new batch, or
#: None to leave that stream's batch as it was
StreamStep = Callable[[int, list[torch.Tensor]], Sequence["torch.Tensor | None"]]


class LayerPass:
    """The current inputs of every batch of windows, per stream; ``advance`` runs one layer."""

    def __init__(self, adapter: Adapter, tokens: torch.Tensor, batch_size: int, streams: int = 1):
        self.adapter = adapter
        self.device = execution_device(adapter.model)
        self.store = torch.device("cpu") if is_streamed(adapter.model) else self.device
        first = [adapter.embed_tokens(b.to(self.device)).to(self.store)
                 for b in tokens.split(max(1, batch_size)) if b.shape[0]]
        self.streams = [first] + [[h.clone() for h in first] for _ in range(streams - 1)]

    @property
    def hidden(self) -> list[torch.Tensor]:
        """The first stream's batches."""
        return self.streams[0]

    def map(self, step: StreamStep, streams: Sequence[int] = (0,)) -> None:
        """Call ``step`` on every batch with the chosen streams' activations on the device; a
        returned tensor replaces that stream's batch."""
        for b in range(len(self.streams[0])):
            xs = [self.streams[s][b].to(self.device) for s in streams]
            for s, y in zip(streams, step(b, xs), strict=True):
                if y is not None:
                    self.streams[s][b] = y.to(self.store)

    def advance(self, i: int, each: BatchCallback | None = None) -> None:
        """Run layer ``i`` on every batch of the first stream; its outputs become the next
        layer's inputs."""

        def step(b: int, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            y = self.adapter.layer_forward(i, xs[0], self.adapter.block_inputs(xs[0]))
            if each is not None:
                each(b, xs[0], y)
            return [y]

        self.map(step)
