"""The sequential calibration pass behind reconstruction and SlimGPT: layer by layer, each
projection's statistics come from inputs that already went through the pruned and reconstructed
layers before it.

It runs on the layer pass the pipeline hands over (:class:`~prunectl.pipelines.layers.Layers`)
with two streams: the *pruned* one (earlier layers pruned and reconstructed) and, for the
``dense`` reference (``method.reconstruct_target: dense``), the *dense* one (the untouched model
on the same tokens).  Per layer: (1) attention on both streams, recording ``o_proj``'s inputs;
the ``solve`` callback decides the new ``o_proj``; (2) the pruned stream takes the new
attention, and both streams' MLPs record ``down_proj``'s inputs; ``solve`` decides the new ``down_proj``; (3) the pruned stream takes the new MLP.  A pruned
projection is emulated by a forward hook computing ``W' x + b'`` with the removed columns of ``W'``
zero, which is exactly what the sliced model computes (removed heads and channels then contribute
nothing).  Nothing is written to the model: the caller gets every solution and decides (``apply``
slices them in; SlimGPT's ``search`` keeps only which units went).  Under ``torchrun`` every rank
runs all windows (no sharding).

With a :class:`~prunectl.pipelines.layers.LayerCheckpoint` the pass resumes per block: after
each residual block (unit ``u``: ``2i`` layer i's attention, ``2i + 1`` its MLP) its solution
goes to ``solutions-<u>.safetensors`` and the streams' activations to the checkpoint, so a
killed pass restarts at the first unfinished block with exactly the tensors an uninterrupted one
holds there.  A progress bar counts blocks; after the first layer one line estimates the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from prunectl import distributed
from prunectl.digest import digest
from prunectl.io import load_tensors, save_tensors
from prunectl.methods.inputs import Journal
from prunectl.methods.width.least_squares import augmented
from prunectl.methods.width.moments import SecondMoments
from prunectl.modeling.adapters import Adapter
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.pipelines.layers import LayerCheckpoint, LayerPass, Layers

REFERENCES = ("dense", "self")


@dataclass
class Solution:
    """A projection's new augmented weight ``[W', b']`` ([out, n + 1], float64; removed columns
    zero) and the input channels it removed (dense numbering); ``trained``: new weights of the
    block's other projections by parameter name (block-local distillation, :mod:`.bld`)."""

    removed: list[int]
    weight: torch.Tensor
    trained: dict[str, torch.Tensor] = field(default_factory=dict)


#: (layer, "o_proj" | "down_proj", the residual block, its solution, the block's input batches)
#: -> the solution to keep (block-local distillation refines the least-squares one)
Refine = Callable[[int, str, Callable, "Solution", list[torch.Tensor]], "Solution"]


#: (layer, "o_proj" | "down_proj", augmented dense weight, moments) -> Solution, or None to keep
Solver = Callable[[int, str, torch.Tensor, SecondMoments], "Solution | None"]


def replace_output(solution: Solution):
    """A forward hook making a projection compute ``solution`` (``W' x + b'``, removed columns
    zero): exactly what the sliced model computes, so a plan can be tried without surgery."""
    w, b = solution.weight[:, :-1], solution.weight[:, -1]

    def hook(_module, args, output):
        x = args[0]
        return F.linear(x, w.to(x.device, x.dtype), b.to(x.device, x.dtype)).to(output.dtype)

    return hook


def hook_solution(model: torch.nn.Module, linear: torch.nn.Linear, solution: Solution) -> list:
    """Forward hooks making ``linear`` and every projection in ``solution.trained`` compute their
    new weights; the handles, to remove."""
    handles = [linear.register_forward_hook(replace_output(solution))]
    for name, weight in solution.trained.items():
        if not name.endswith(".weight"):
            continue
        module = model.get_submodule(name[:-len(".weight")])
        bias = solution.trained.get(name[:-len("weight")] + "bias")
        handles.append(module.register_forward_hook(_linear_hook(weight, bias)))
    return handles


def _linear_hook(weight: torch.Tensor, bias: torch.Tensor | None):
    def hook(_module, args, output):
        x = args[0]
        b = None if bias is None else bias.to(x.device, x.dtype)
        return F.linear(x, weight.to(x.device, x.dtype), b).to(output.dtype)

    return hook


def _record(captured: dict):
    def hook(_module, args):
        captured["x"] = args[0]

    return hook


def _capture(layers: LayerPass, linear, run_block, dense: bool, device) -> SecondMoments:
    """Run ``run_block`` on every batch of both streams, recording ``linear``'s inputs; the dense
    stream advances (its layer is never replaced), the pruned one waits for the solution."""
    moments = SecondMoments(linear.in_features, dense, device)
    captured: dict = {}

    def step(_b, xs):
        run_block(xs[0])
        x_pruned = captured["x"]
        if not dense:
            moments.update(x_pruned, None)
            return [None]
        out = run_block(xs[1])
        moments.update(x_pruned, captured["x"])
        return [None, out]

    handle = linear.register_forward_pre_hook(_record(captured))
    try:
        layers.map(step, (0, 1) if dense else (0,))
    finally:
        handle.remove()
    return moments


def _advance(layers: LayerPass, run_block, dense: bool) -> None:
    """Both streams through a block nobody solves (its inputs are not recorded)."""
    layers.map(lambda _b, xs: [run_block(x) for x in xs], (0, 1) if dense else (0,))


def layer_checkpoint(layers: Layers, journal: Journal, folder: str, *parts) -> LayerCheckpoint:
    """A per-layer checkpoint of a pass over ``layers``' windows in ``journal``'s folder's
    ``folder`` (which it deletes when the pass completes), keyed by the journal's key, the
    windows and ``parts`` (what ``solve`` does): progress made for other inputs starts over."""
    directory = None if journal.directory is None else journal.directory / folder
    key = digest(journal.key, distributed.current().world_size, layers.tokens, *parts)
    return layers.checkpoint(Journal(directory, key), key)


NAMES = ("o_proj", "down_proj")


def _save_block(checkpoint: LayerCheckpoint, unit: int, solutions: dict[str, Solution]) -> None:
    """Block ``unit``'s solution (``2i``: layer i's attention, ``2i + 1``: its MLP) beside the
    checkpoint (rank 0; before the checkpoint's record names the unit done)."""
    if checkpoint.directory is None or not checkpoint.group.is_main:
        return
    key = f"layers.{unit // 2}.{NAMES[unit % 2]}"
    mine = {key: solutions[key]} if key in solutions else {}
    tensors = {f"{k}.weight": v.weight for k, v in mine.items()}
    tensors |= {f"{k}.removed": torch.tensor(v.removed, dtype=torch.long) for k, v in mine.items()}
    tensors |= {f"{k}.trained.{name}": t for k, v in mine.items() for name, t in v.trained.items()}
    save_tensors(checkpoint.directory / f"solutions-{unit}.safetensors", tensors)


def _load_blocks(checkpoint: LayerCheckpoint, done: int, store) -> dict[str, Solution]:
    """The solutions of blocks ``0 .. done-1`` a resumed pass starts from (every rank)."""
    tensors: dict = {}
    if checkpoint.group.is_main:
        for unit in range(done):
            tensors |= load_tensors(checkpoint.directory / f"solutions-{unit}.safetensors")
    tensors = checkpoint.group.broadcast_object(tensors)
    solutions = {}
    for k, v in tensors.items():
        if k.endswith(".removed"):
            key = k[:-len(".removed")]
            trained = {name[len(f"{key}.trained."):]: t.to(store) for name, t in tensors.items()
                       if name.startswith(f"{key}.trained.")}
            solutions[key] = Solution(v.tolist(), tensors[f"{key}.weight"].to(store), trained)
    return solutions


@torch.inference_mode()
def sequential_pass(
    layers: Layers, solve: Solver, reference: str, ui: UI = SILENT,
    wanted: Collection[str] | None = None,
    checkpoint: LayerCheckpoint | None = None, description: str = "least-squares refit",
    refine: Refine | None = None,
) -> dict[str, Solution]:
    """``layers.N.o_proj`` / ``layers.N.down_proj`` -> :class:`Solution` for every projection
    ``solve`` changed, its weight in the model's dtype (one extra copy of the pruned projections,
    in host memory when layers stream).  The model's weights are left as they were (hooks only,
    removed at the end).  ``wanted``: the projections ``solve`` may change (None: every one);
    the others' inputs are never recorded and ``solve`` is not called for them.  ``reference``:
    what the refit reproduces, the ``dense`` model's outputs or the pruned stream's own
    (``self``).  ``checkpoint``: resume per block (its key must name ``solve``'s inputs too;
    its count is of blocks, two a layer).  ``refine``: called with each solution and the
    block's input batches (the pruned stream) before the stream advances through it."""
    if reference not in REFERENCES:
        raise ValueError(f"unknown reconstruction reference {reference!r}")
    adapter, dense = layers.adapter, reference == "dense"
    layer_pass = layers.start(streams=2 if dense else 1)
    start, solutions = 0, {}
    if checkpoint is not None:
        start, _ = checkpoint.resume(layer_pass, layers.batch_size)
        solutions = _load_blocks(checkpoint, start, layer_pass.store) if start else {}
    handles = []
    try:
        with ui.meter(description, 2 * adapter.num_layers, start, "block") as meter:
            for unit in range(start, 2 * adapter.num_layers):
                _block(adapter, layer_pass, unit, solve, dense, wanted, solutions, handles,
                       refine)
                if checkpoint is not None:
                    _save_block(checkpoint, unit, solutions)
                    checkpoint.save(unit + 1, {}, layer_pass)
                meter.advance()
                if unit % 2:  # a whole layer measured
                    meter.estimate()
        if checkpoint is not None:
            checkpoint.clear()
    finally:
        for handle in handles:
            handle.remove()
    return solutions


def _block(adapter: Adapter, layers: LayerPass, unit: int, solve: Solver, dense: bool,
           wanted: Collection[str] | None, solutions: dict[str, Solution], handles: list,
           refine: Refine | None = None) -> None:
    """Block ``unit`` of :func:`sequential_pass` (layer ``unit // 2``'s attention, then its
    MLP): its solution added, its hooks in ``handles``."""
    i, name = unit // 2, NAMES[unit % 2]
    if name == "o_proj":
        present = adapter.attention(i)
        block = lambda h: adapter.attention_block(i, h, adapter.block_inputs(h))  # noqa: E731
    else:
        present = adapter.mlp(i)
        block = lambda h: adapter.mlp_block(i, h)  # noqa: E731
    if present is None:  # a removed block is the identity: nothing to run
        return
    key = f"layers.{i}.{name}"
    if wanted is not None and key not in wanted:
        _advance(layers, block, dense)
        return
    linear = getattr(adapter, name)(i)
    moments = _capture(layers, linear, block, dense, layers.device)
    weight = augmented(linear.weight, linear.bias)
    solution = solve(i, name, weight, moments)
    del moments
    if solution is not None and refine is not None:
        solution = refine(i, name, block, solution, layers.streams[0])
    if solution is not None:  # kept in the model's dtype, beside its weights
        solution.weight = solution.weight.to(layers.store, linear.weight.dtype)
        solution.trained = {k: t.to(layers.store, linear.weight.dtype)
                            for k, t in solution.trained.items()}
        solutions[key] = solution
        handles.extend(hook_solution(adapter.model, linear, solution))
    layers.map(lambda _b, xs: [block(xs[0])])
