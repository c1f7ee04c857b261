"""REAP's expert statistics as a callback on the layer pass, resumable.

The layer pass the pipeline hands over (:class:`~prunectl.pipelines.layers.Layers`, its
:class:`~prunectl.pipelines.layers.LayerPass`) runs each decoder layer over the stored
activations batch by batch; here its MoE block runs expert by expert (:func:`moe_forward`), so
one pass gives every expert's routing statistics and the layer's output.  After each layer the
statistics so far and the activations are checkpointed through the calibrate step's journal
(:class:`~prunectl.pipelines.layers.LayerCheckpoint`, under ``calibration/progress/``), so a
killed calibration resumes at the next layer instead of layer 0; the folder is removed when the
pass completes.  Progress made for other inputs (``progress_key``) is ignored and replaced.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunectl import distributed
from prunectl.digest import digest
from prunectl.methods.inputs import Journal
from prunectl.methods.reap.saliency import ExpertStats
from prunectl.modeling.moe import moe_forward
from prunectl.modeling.placement import execution_device, is_streamed
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.pipelines.layers import Layers


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


@torch.inference_mode()
def collect_expert_stats(
    layers: Layers, journal: Journal | None = None, ui: UI = SILENT,
) -> dict[str, torch.Tensor]:
    """``layers.N.experts.{count,gate_sum,reap_sum,ean_sum,tokens}`` for every MoE layer, on the
    layer pass with one checkpoint per layer through ``journal`` (the calibrate step's).

    Under ``torchrun`` each rank runs every ``world_size``-th window; the sums are added across
    ranks after each layer.
    """
    group, layers = distributed.current(), layers.sharded()
    adapter = layers.adapter
    device = execution_device(adapter.model)
    streamed = is_streamed(adapter.model)
    layer_pass = layers.start()
    key = progress_key(layers.tokens, "" if journal is None else journal.key, group.world_size)
    checkpoint = layers.checkpoint(journal, key)
    start, stats = checkpoint.resume(layer_pass, layers.batch_size)
    todo = range(start, adapter.num_layers)
    for i in ui.progress(todo, total=len(todo), description="expert statistics"):
        layer_stats = None if adapter.experts(i) is None else \
            ExpertStats.zeros(adapter.num_experts(i))

        def step(b: int, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            chunk = adapter.attention_block(i, xs[0], adapter.block_inputs(xs[0]))
            if layer_stats is None:
                return [adapter.mlp_block(i, chunk)]
            normed = adapter.post_attention_norm(i)(chunk)
            with _resident(adapter.mlp(i), device, streamed):
                out, routed = moe_forward(adapter.mlp(i), normed)
            layer_stats.update(routed)
            return [chunk + out]

        layer_pass.map(step)
        if layer_stats is not None:
            layer_stats.merge_ranks(group)
            stats.update(layer_stats.as_dict(stat_prefix(i)))
        checkpoint.save(i + 1, stats, layer_pass)
    checkpoint.clear()
    return stats
