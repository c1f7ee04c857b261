"""The sequential calibration pass behind reconstruction and SlimGPT: layer by layer, each
projection's statistics come from inputs that already went through the pruned and reconstructed
layers before it.

Like FLAP's ``collect`` pass, every window is embedded once and one decoder layer at a time runs
over the cached hidden states in batches.  Two streams are kept: the *pruned* one (earlier layers
pruned and reconstructed) and, for ``target: dense``, the *dense* one (the untouched model on the
same tokens).  Per layer: (1) attention on both streams, recording ``o_proj``'s inputs; the
``solve`` callback decides the new ``o_proj``; (2) the pruned stream takes the new attention, and
both streams' MLPs record ``down_proj``'s inputs; ``solve`` decides the new ``down_proj``; (3) the
pruned stream takes the new MLP.  A pruned projection is emulated by a forward hook computing
``W' x + b'`` with the removed columns of ``W'`` zero, which is exactly what the sliced model
computes (removed heads and channels then contribute nothing).  Nothing is written to the model:
the caller gets every solution and decides (``apply`` slices them in; SlimGPT's ``search`` keeps
only which units went).  Under ``torchrun`` every rank runs all windows (no sharding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunectl.methods.reconstruct.least_squares import augmented
from prunectl.methods.reconstruct.moments import SecondMoments
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device, is_streamed
from prunectl.ui import SILENT, UI

TARGETS = ("dense", "self")


@dataclass
class Solution:
    """A projection's new augmented weight ``[W', b']`` ([out, n + 1], float64; removed columns
    zero) and the input channels it removed (dense numbering)."""

    removed: list[int]
    weight: torch.Tensor


#: (layer, "o_proj" | "down_proj", augmented dense weight, moments) -> Solution, or None to keep
Solver = Callable[[int, str, torch.Tensor, SecondMoments], "Solution | None"]


def _replace(solution: Solution):
    w, b = solution.weight[:, :-1], solution.weight[:, -1]

    def hook(_module, args, output):
        x = args[0]
        return F.linear(x, w.to(x.device, x.dtype), b.to(x.device, x.dtype)).to(output.dtype)

    return hook


def _record(captured: dict):
    def hook(_module, args):
        captured["x"] = args[0]

    return hook


class _Layer:
    """One layer's pass over both streams, batch by batch."""

    def __init__(self, adapter, i, batches, store, device):
        self.adapter, self.i, self.batches = adapter, i, batches
        self.store, self.device = store, device

    def capture(self, name: str, pruned, dense, run_block):
        """Run ``run_block`` on every batch of both streams, recording ``name``'s inputs; the
        dense stream advances in place (its layer is never replaced)."""
        linear = getattr(self.adapter, name)(self.i)
        moments = SecondMoments(linear.in_features, dense is not None, self.device)
        captured: dict = {}
        handle = linear.register_forward_pre_hook(_record(captured))
        try:
            for b in self.batches:
                chunk = pruned[b].to(self.device)
                run_block(chunk)
                x_pruned = captured["x"]
                x_dense = None
                if dense is not None:
                    out = run_block(dense[b].to(self.device))
                    x_dense = captured["x"]
                    dense[b] = out.to(self.store)
                moments.update(x_pruned, x_dense)
        finally:
            handle.remove()
        return linear, moments

    def advance(self, pruned, run_block):
        for b in self.batches:
            pruned[b] = run_block(pruned[b].to(self.device)).to(self.store)


@torch.inference_mode()
def sequential_pass(
    adapter: Adapter, tokens: torch.Tensor, batch_size: int, solve: Solver,
    target: str = "dense", ui: UI = SILENT,
) -> dict[str, Solution]:
    """``layers.N.o_proj`` / ``layers.N.down_proj`` -> :class:`Solution` for every projection
    ``solve`` changed, its weight in the model's dtype (one extra copy of the pruned projections,
    in host memory when layers stream).  The model's weights are left as they were (hooks only,
    removed at the end)."""
    if target not in TARGETS:
        raise ValueError(f"unknown reconstruction target {target!r}")
    batches = [slice(s, s + batch_size) for s in range(0, tokens.shape[0], batch_size)]
    device = execution_device(adapter.model)
    store = torch.device("cpu") if is_streamed(adapter.model) else device
    pruned = adapter.embed_tokens(tokens.to(device)).to(store)
    dense = pruned.clone() if target == "dense" else None

    solutions: dict[str, Solution] = {}
    handles = []
    try:
        for i in ui.progress(range(adapter.num_layers), total=adapter.num_layers,
                             description="sequential reconstruction"):
            layer = _Layer(adapter, i, batches, store, device)
            attention = lambda h, i=i: adapter.attention_block(i, h, adapter.block_inputs(h))  # noqa: E731
            mlp = lambda h, i=i: adapter.mlp_block(i, h)  # noqa: E731
            for name, block, present in (("o_proj", attention, adapter.attention(i)),
                                         ("down_proj", mlp, adapter.mlp(i))):
                if present is not None:
                    linear, moments = layer.capture(name, pruned, dense, block)
                    weight = augmented(linear.weight, linear.bias)
                    solution = solve(i, name, weight, moments)
                    del moments
                    if solution is not None:  # kept in the model's dtype, beside its weights
                        solution.weight = solution.weight.to(store, linear.weight.dtype)
                        solutions[f"layers.{i}.{name}"] = solution
                        handles.append(linear.register_forward_hook(_replace(solution)))
                layer.advance(pruned, block)
    finally:
        for handle in handles:
            handle.remove()
    return solutions
