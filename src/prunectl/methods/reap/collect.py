"""Layer-by-layer calibration pass that records every routed expert's statistics, resumable.

Every window is embedded once; each decoder layer then runs over the stored hidden states in
batches, its MoE block expert by expert (:func:`moe_forward`), so one pass gives every expert's
routing statistics and the layer's output, which becomes the next layer's input.  After each
layer the statistics so far and the hidden states are written under ``calibration/progress/``,
so a killed calibration resumes at the next layer instead of layer 0; the folder is removed when
the pass completes.  A progress folder made for other inputs (``key``) is ignored and replaced.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from prunectl import distributed
from prunectl.digest import digest
from prunectl.io import load_tensors, read_json, save_tensors, write_json
from prunectl.methods.reap.saliency import ExpertStats
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.moe import moe_forward
from prunectl.modeling.placement import execution_device, is_streamed
from prunectl.ui import SILENT, UI


def stat_prefix(i: int) -> str:
    return f"layers.{i}.experts"


@contextmanager
def _resident(module: nn.Module, device: torch.device, streamed: bool):
    """Keep a streamed block on the device while its router and experts are called directly
    (the streaming hooks fire only on the block's own forward)."""
    if not streamed:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


def progress_key(tokens: torch.Tensor, key: str, world_size: int) -> str:
    """What a saved progress folder must have been made with: these tokens, these settings."""
    return digest(tokens, {"key": key, "world_size": world_size})


class Progress:
    """Per-layer checkpoints: ``meta.json`` names the last finished layer ``n``, whose files
    ``stats-<n>`` and ``hidden-<n>-rank<R>`` are written before it and kept until the next."""

    def __init__(self, directory: Path | None, key: str, group):
        self.directory, self.key, self.group = directory, key, group

    def _files(self, layer: int) -> tuple[Path, Path]:
        return (self.directory / f"stats-{layer}.safetensors",
                self.directory / f"hidden-{layer}-rank{self.group.rank}.safetensors")

    def resume(self) -> tuple[int, dict, torch.Tensor | None]:
        """(first layer to run, statistics so far, its input hidden states or None)."""
        meta = self.directory / "meta.json" if self.directory else None
        if meta is None or not meta.is_file() or read_json(meta).get("key") != self.key:
            return 0, {}, None
        done = int(read_json(meta)["layers_done"])
        stats_file, hidden_file = self._files(done)
        return done, load_tensors(stats_file), load_tensors(hidden_file)["hidden"]

    def save(self, done: int, stats: dict, hidden: torch.Tensor) -> None:
        if self.directory is None:
            return
        stats_file, hidden_file = self._files(done)
        save_tensors(hidden_file, {"hidden": hidden})
        if self.group.is_main:
            save_tensors(stats_file, stats)
        self.group.barrier()  # every rank's hidden states are on disk before meta points at them
        if self.group.is_main:
            write_json(self.directory / "meta.json", {"key": self.key, "layers_done": done})
        self.group.barrier()
        for old in self._files(done - 1):
            old.unlink(missing_ok=True)

    def clear(self) -> None:
        self.group.barrier()
        if self.directory is not None and self.group.is_main:
            shutil.rmtree(self.directory, ignore_errors=True)


@torch.inference_mode()
def collect_expert_stats(
    adapter: Adapter, tokens: torch.Tensor, batch_size: int, progress_dir: Path | None = None,
    key: str = "", ui: UI = SILENT,
) -> dict[str, torch.Tensor]:
    """``layers.N.experts.{count,gate_sum,reap_sum,ean_sum,tokens}`` for every MoE layer.

    Under ``torchrun`` each rank runs every ``world_size``-th window; the sums are added across
    ranks after each layer.
    """
    group = distributed.current()
    tokens = tokens[list(group.shard_range(tokens.shape[0]))]
    batches = [slice(s, s + batch_size) for s in range(0, tokens.shape[0], batch_size)]
    device = execution_device(adapter.model)
    streamed = is_streamed(adapter.model)
    store = torch.device("cpu") if streamed else device
    progress = Progress(progress_dir, progress_key(tokens, key, group.world_size), group)
    start, stats, hidden = progress.resume()
    if hidden is None:
        hidden = adapter.embed_tokens(tokens).to(store)
    hidden = hidden.to(store)
    block_inputs: dict[tuple, dict] = {}  # rotary tables and masks, once per batch shape
    layers = range(start, adapter.num_layers)
    for i in ui.progress(layers, total=len(layers), description="expert statistics"):
        experts = adapter.experts(i)
        layer_stats = None if experts is None else ExpertStats.zeros(adapter.num_experts(i))
        for b in batches:
            chunk = hidden[b].to(device)
            inputs = block_inputs.get(tuple(chunk.shape))
            if inputs is None:
                inputs = block_inputs[tuple(chunk.shape)] = adapter.block_inputs(chunk)
            chunk = adapter.attention_block(i, chunk, inputs)
            if layer_stats is None:
                chunk = adapter.mlp_block(i, chunk)
            else:
                normed = adapter.post_attention_norm(i)(chunk)
                with _resident(adapter.mlp(i), device, streamed):
                    out, routed = moe_forward(adapter.mlp(i), normed)
                layer_stats.update(routed)
                chunk = chunk + out
            hidden[b] = chunk.to(store)
        if layer_stats is not None:
            layer_stats.merge_ranks(group)
            stats.update(layer_stats.as_dict(stat_prefix(i)))
        progress.save(i + 1, stats, hidden)
    progress.clear()
    return stats
