"""Calibration windows pushed through a model one decoder layer at a time.

Block Influence (ShortGPT) and the FLAP / wanda-sp statistics all need every layer's input and
output on every calibration window.  They share this pass: the windows are embedded once, each
layer runs through the model's own decoder-layer module on every batch (rotary tables and masks
built once per batch shape, see ``Adapter.block_inputs``), and its outputs replace its inputs.
Only one layer's activations, ``[windows, seqlen, hidden]``, are held at a time; they stay on the
execution device (in host memory only while layers stream from there), so nothing is copied or
cast between layers.  Callers run it under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device, is_streamed

#: sees (batch index, layer input, layer output) for every batch of a layer
BatchCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


class LayerPass:
    """The current layer's inputs of every batch of windows; ``advance`` runs one layer."""

    def __init__(self, adapter: Adapter, tokens: torch.Tensor, batch_size: int):
        self.adapter = adapter
        self.device = execution_device(adapter.model)
        self.store = torch.device("cpu") if is_streamed(adapter.model) else self.device
        self.hidden = [adapter.embed_tokens(b.to(self.device)).to(self.store)
                       for b in tokens.split(max(1, batch_size)) if b.shape[0]]

    def advance(self, i: int, each: BatchCallback | None = None) -> None:
        """Run layer ``i`` on every batch; its outputs become the next layer's inputs."""
        for b, stored in enumerate(self.hidden):
            x = stored.to(self.device)
            y = self.adapter.layer_forward(i, x, self.adapter.block_inputs(x))
            if each is not None:
                each(b, x, y)
            self.hidden[b] = y.to(self.store)
