"""Gradients of the language-model loss on calibration text, accumulated in fp32.

The reference (horseee/LLM-Pruner ``hf_prune.py`` / ``llama3.py``) runs one backward pass on all
calibration samples at once (``g``: gradient of the mean loss) and, for the second-order criteria,
one backward pass per sample summing ``grad**2 / n`` (``acc_grad``, a diagonal Fisher).  Here the
samples go through in micro-batches and every gradient is added into fp32 accumulators by a
post-accumulate hook that frees the parameter's own ``.grad`` at once, so a model in bf16 never
holds a full set of gradients: the memory is the weights, one fp32 accumulator per scored weight
(two with the Fisher term) and the activations of one micro-batch.  Every sample has the same
length, so the mean over micro-batches of their mean losses is the reference's single-batch mean.
The Fisher term needs per-sample gradients, so it forces micro-batches of one sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.modeling.placement import execution_device, is_streamed
from prunectl.ui import SILENT, UI


class GradientStore:
    """fp32 gradient sums (and optional Fisher sums) for chosen parameters, looked up by view."""

    def __init__(self, model: nn.Module, weights: Iterable[torch.Tensor], fisher: bool):
        owners = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        unique = {}
        for weight in weights:
            param = owners[weight.untyped_storage().data_ptr()]
            unique[id(param)] = param
        self.params = list(unique.values())
        self.grad = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in self.params}
        self.fisher = (
            {id(p): torch.zeros_like(p, dtype=torch.float32) for p in self.params} if fisher else None
        )
        self._by_storage = {p.untyped_storage().data_ptr(): p for p in self.params}

    def views(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The accumulators' slices matching ``weight``, a parameter or a view of one (Phi-3's fused
        projections are split by the adapter into views of one ``qkv_proj`` weight)."""
        base = self._by_storage[weight.untyped_storage().data_ptr()]
        offset = weight.storage_offset() - base.storage_offset()

        def match(acc: torch.Tensor) -> torch.Tensor:
            return acc.as_strided(weight.shape, weight.stride(), acc.storage_offset() + offset)

        fisher = None if self.fisher is None else match(self.fisher[id(base)])
        return match(self.grad[id(base)]), fisher


def require_whole_model(model: nn.Module, who: str) -> None:
    """Refuse a layer-wise streamed model: each piece's weights leave the device before its
    gradient exists."""
    if is_streamed(model):
        raise UserError(
            f"{who} needs gradients through the whole model, which layer-wise streaming cannot "
            "give (each piece's weights leave the device before its gradient exists); set "
            "execution.mode: model and, for a model larger than one device, model.device_map: "
            "auto")


def accumulate_gradients(
    model: nn.Module,
    tokens: torch.Tensor,
    store: GradientStore,
    batch_size: int,
    checkpointing: bool = False,
    ui: UI = SILENT,
) -> float:
    """Fill ``store`` from the LM loss on ``tokens`` ([n, seqlen]); return the mean loss.

    ``store.grad`` ends as the gradient of the mean loss over all samples; ``store.fisher`` as the
    mean over samples of the squared per-sample gradient.  Only the stored parameters require
    gradients during the passes; every ``requires_grad`` flag and the train/eval mode are restored.
    Under ``torchrun`` each rank takes every ``world_size``-th micro-batch (scaled by the global
    ``n``) and the fp32 accumulators are summed over ranks, so every rank ends with the totals.
    """
    group = distributed.current()
    n = tokens.shape[0]
    if store.fisher is not None:
        batch_size = 1
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    scale = {"value": 0.0}

    def add(param: nn.Parameter) -> None:
        grad = param.grad.float()
        store.grad[id(param)].add_(grad, alpha=scale["value"])
        if store.fisher is not None:
            store.fisher[id(param)].addcmul_(grad, grad, value=1.0 / n)
        param.grad = None

    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for p in store.params:
        p.requires_grad_(True)
        handles.append(p.register_post_accumulate_grad_hook(add))
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.train()  # Hugging Face models checkpoint only in training mode
    total = 0.0
    try:
        starts = group.shard(range(0, n, batch_size))
        for start in ui.progress(starts, total=len(starts), description="gradients"):
            batch = tokens[start : start + batch_size]
            scale["value"] = batch.shape[0] / n
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            total += float(loss.detach()) * batch.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        if checkpointing:
            model.activation_checkpointing_disable()
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
    for acc in list(store.grad.values()) + list((store.fisher or {}).values()):
        acc.copy_(group.sum(acc))
    return float(group.sum(torch.tensor([total], dtype=torch.float64))) / n


@dataclass(frozen=True)
class Gradients:
    """The gradient pass as a pipeline hands it to a method (``inputs.gradients``): the model
    and the step's windows."""

    model: nn.Module
    tokens: torch.Tensor

    def require_whole_model(self, who: str) -> None:
        """Refuse a layer-wise streamed model (:func:`require_whole_model`)."""
        require_whole_model(self.model, who)

    def accumulate(self, weights: Iterable[torch.Tensor], fisher: bool, batch_size: int,
                   checkpointing: bool = False, ui: UI = SILENT) -> tuple[GradientStore, float]:
        """The fp32 gradient sums of ``weights`` over the windows (:func:`accumulate_gradients`)
        and the mean loss."""
        store = GradientStore(self.model, weights, fisher)
        loss = accumulate_gradients(self.model, self.tokens.to(execution_device(self.model)),
                                    store, batch_size, checkpointing, ui)
        return store, loss
