"""Where a model's weights live while a step runs: whole on the device, or one layer at a time.

``execution.mode: layerwise`` keeps the weights in host memory and moves each top-level piece
(the embeddings, one attention or MLP block, the final norm and LM head) to the device just
before it runs and back right after, so peak device memory is about one block plus activations.  The math is
unchanged, so results equal whole-model execution.

Why hooks of our own rather than ``accelerate.cpu_offload``: accelerate's offload replaces the
parameters by meta tensors and keeps the real ones in its hooks, which breaks every method that
reads weights directly (FLAP's column norms, Taylor and magnitude importance).  Here the
parameters stay real tensors; only their device changes.  Multi-GPU sharding of a model that does
not fit one device goes through accelerate (``model.device_map``) instead.
"""

from __future__ import annotations

import torch
from torch import nn

from prunectl.modeling.adapters import Adapter


def pieces(model: nn.Module) -> list[nn.Module]:
    """What streams as one unit: the embeddings, each residual block's modules (attention, MLP
    and their norms: the adapter runs them one by one, not through the layer's own forward), the
    final norm, the LM head and the rotary table."""
    adapter = Adapter(model)
    blocks = [child for layer in adapter.layers for child in layer.children()]
    return [adapter.embed_tokens, *blocks, adapter.final_norm, adapter.lm_head,
            adapter.decoder.rotary_emb]


def stream_layers(model: nn.Module, device: torch.device) -> nn.Module:
    """Keep ``model`` in host memory and run each piece on ``device`` (forward hooks).

    Inputs are moved to the device by the piece's pre-hook, so callers may hand over host
    tensors (the layer inputs a search caches on the CPU, say).
    """
    model.to("cpu")
    model._prunectl_stream_device = device
    for piece in pieces(model):
        piece.register_forward_pre_hook(_to_device(device), with_kwargs=True)
        piece.register_forward_hook(_to_host)
    return model


def execution_device(model: nn.Module) -> torch.device:
    """Where the model computes, so inputs and activations go there: the streaming device under
    layer-wise execution (its weights wait in host memory), else the device of its first weight."""
    streamed = getattr(model, "_prunectl_stream_device", None)
    return streamed if streamed is not None else next(model.parameters()).device


def is_streamed(model: nn.Module) -> bool:
    return getattr(model, "_prunectl_stream_device", None) is not None


def _move(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


def _to_device(device: torch.device):
    def hook(module: nn.Module, args, kwargs):
        module.to(device)
        return _move(args, device), _move(kwargs, device)

    return hook


def _to_host(module: nn.Module, args, output):
    module.to("cpu")
    return output
