"""Layer-by-layer calibration pass that records the o_proj and down_proj input moments.

Each decoder layer runs over every window on the layer pass the pipeline hands over
(:class:`~prunectl.pipelines.layers.Layers`, ``inputs.layers``) with
forward pre-hooks on its ``o_proj`` and ``down_proj`` feeding :class:`RunningMoments`.  Only one
layer's work is in flight at a time, as in the reference's ``prune_flap`` loop, so the activations
kept are one ``[windows, seqlen, hidden]`` buffer whatever the depth.
"""

from __future__ import annotations

import torch

from typing import TYPE_CHECKING

from prunectl import distributed
from prunectl.methods.width.statistics import RunningMoments
from prunectl.modeling.placement import execution_device
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.pipelines.layers import Layers


def stat_key(i: int, module: str) -> str:
    """Prefix of a statistic: ``layers.3.o_proj`` / ``layers.3.down_proj``."""
    return f"layers.{i}.{module}"


@torch.inference_mode()
def collect_statistics(layers: Layers, ui: UI = SILENT) -> dict[str, torch.Tensor]:
    """Moments of every layer's ``o_proj`` and ``down_proj`` inputs over all calibration tokens.

    Under ``torchrun`` each rank runs every ``world_size``-th window and the moments are merged
    across ranks after each layer (:meth:`RunningMoments.merge_ranks`).
    """
    group, adapter = distributed.current(), layers.adapter
    device = execution_device(adapter.model)
    layer_pass = layers.sharded().start()  # a rank may hold no window; still merges
    stats: dict[str, torch.Tensor] = {}
    for i in ui.progress(range(adapter.num_layers), total=adapter.num_layers,
                         description="layer statistics"):
        moments, handles = {}, []
        for name in ("o_proj", "down_proj"):
            block = adapter.attention(i) if name == "o_proj" else adapter.mlp(i)
            if block is None or (name == "down_proj" and adapter.experts(i) is not None):
                continue
            linear = getattr(adapter, name)(i)
            moments[name] = RunningMoments(linear.in_features, device)
            handles.append(linear.register_forward_pre_hook(_recorder(moments[name])))
        try:
            layer_pass.advance(i)
        finally:
            for handle in handles:
                handle.remove()
        for name, m in moments.items():
            m.merge_ranks(group)
            stats.update(m.as_dict(stat_key(i, name)))
    return stats


def _recorder(moments: RunningMoments):
    def hook(_module, args):
        moments.update(args[0])

    return hook
