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
Callers run it under ``torch.inference_mode``.  A method gets it as :class:`Layers` (the
``layer_inputs`` pipeline's pass, ``inputs.layers``) and starts passes and checkpoints there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from prunectl import distributed
from prunectl.io import load_tensors, save_tensors
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device, is_streamed

if TYPE_CHECKING:
    from prunectl.distributed import Distributed
    from prunectl.methods.inputs import Journal

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

    def state(self, stream: int = 0) -> torch.Tensor:
        """A stream's activations, every batch in one tensor."""
        return torch.cat(self.streams[stream]) if self.streams[stream] else torch.empty(0)

    def restore(self, hidden: torch.Tensor, batch_size: int, stream: int = 0) -> None:
        """Put back what :meth:`state` gave (a resumed pass)."""
        self.streams[stream] = [h.to(self.store) for h in hidden.split(max(1, batch_size))]


class LayerCheckpoint:
    """A layer pass's per-layer resume point through the step's journal (the sequential
    reconstruction counts blocks, two a layer, instead): after layer ``n`` the
    results so far (``stats-<n>``, rank 0) and every rank's activations of every stream
    (``hidden-<n>-rank<R>``)
    are written beside the journal, then a record ``{"key", "layers_done": n}`` is appended to
    it; the previous layer's files go.  Only the journal's last record counts, and only when
    its ``key`` is this pass's (progress made for other inputs starts over).  Without a journal
    directory nothing is kept."""

    NAME = "layers.jsonl"

    def __init__(self, journal: Journal | None, key: str, group: Distributed):
        self.journal, self.key, self.group = journal, key, group
        self.directory = None if journal is None else journal.directory

    def _files(self, layer: int) -> tuple:
        return (self.directory / f"stats-{layer}.safetensors",
                self.directory / f"hidden-{layer}-rank{self.group.rank}.safetensors")

    def resume(self, layer_pass: LayerPass, batch_size: int) -> tuple[int, dict]:
        """(first layer to run, results so far); the pass's activations are restored."""
        if self.directory is None:
            return 0, {}
        records = self.journal.records(self.NAME)
        if not records or records[-1].get("key") != self.key:
            return 0, {}
        done = int(records[-1]["layers_done"])
        stats_file, hidden_file = self._files(done)
        hidden = load_tensors(hidden_file)
        for s in range(len(layer_pass.streams)):
            layer_pass.restore(hidden["hidden" if s == 0 else f"stream{s}"], batch_size, s)
        return done, load_tensors(stats_file)

    def save(self, done: int, stats: dict, layer_pass: LayerPass) -> None:
        if self.directory is None:
            return
        stats_file, hidden_file = self._files(done)
        save_tensors(hidden_file, {"hidden" if s == 0 else f"stream{s}": layer_pass.state(s)
                                   for s in range(len(layer_pass.streams))})
        if self.group.is_main:
            save_tensors(stats_file, stats)
        self.group.barrier()  # every rank's activations are on disk before the record names them
        self.journal.append({"key": self.key, "layers_done": done}, self.NAME)
        self.group.barrier()
        for old in self._files(done - 1):
            old.unlink(missing_ok=True)

    def clear(self) -> None:
        """The pass completed: its folder goes."""
        self.group.barrier()
        if self.directory is not None and self.group.is_main:
            shutil.rmtree(self.directory, ignore_errors=True)
            with contextlib.suppress(OSError):  # a folder made only to hold this one goes too
                self.directory.parent.rmdir()


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layer pass as a pipeline hands it to a method (``inputs.layers``): the model and the
    step's windows in batches of ``batch_size``; each :meth:`start` is a fresh pass over them."""

    adapter: Adapter
    tokens: torch.Tensor
    batch_size: int

    def sharded(self) -> Layers:
        """This rank's windows under ``torchrun`` (every ``world_size``-th; all of them in one
        process), for passes whose sums are merged across ranks."""
        group = distributed.current()
        return dataclasses.replace(self, tokens=self.tokens[list(group.shard_range(
            self.tokens.shape[0]))])

    def start(self, streams: int = 1) -> LayerPass:
        """The windows embedded, ready for layer 0, in ``streams`` copies."""
        return LayerPass(self.adapter, self.tokens, self.batch_size, streams)

    def checkpoint(self, journal: Journal | None, key: str) -> LayerCheckpoint:
        """A per-layer resume point of a pass over these windows, through ``journal``."""
        return LayerCheckpoint(journal, key, distributed.current())
