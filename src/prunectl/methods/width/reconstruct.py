"""``method.reconstruct*`` keys shared by every width method, and the apply that honours them.

``reconstruct: none`` slices the plan's units out; ``bias`` folds their calibration mean into the
``o_proj``/``down_proj`` bias (FLAP's compensation, from the dense calibration statistics);
``least_squares`` re-solves the kept columns and the bias of every pruned projection in a
sequential pass over the calibration tokens (:mod:`.sequential`, :mod:`.least_squares`); ``bld``
then trains each pruned block's kept projections from there to reproduce the dense block
(:mod:`.bld`).  The
statistics of ``least_squares`` depend on the plan (inputs come through the pruned layers), so
they are computed in ``apply``, not in ``calibrate``; the result is the saved pruned model, so a
finished ``apply`` is never repeated, and an interrupted one resumes at its first unfinished
layer (``apply/layers/``, the sequential pass's per-layer checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, Field, model_serializer

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Journal
from prunectl.methods.width.bld import distill_block
from prunectl.plan import Plan
from prunectl.methods.width.least_squares import solve_kept
from prunectl.methods.width.sequential import Solution, layer_checkpoint, sequential_pass
from prunectl.methods.width.units import removed_channels
from prunectl.modeling.adapters import Adapter
from prunectl.ui import SILENT

if TYPE_CHECKING:
    from prunectl.pipelines.layers import Layers

Reconstruct = Literal["none", "bias", "least_squares", "bld"]
#: the reconstructions that run the sequential pass over calibration tokens in ``apply``
REFITS = ("least_squares", "bld")
BLD_KEYS = ("bld_steps", "bld_lr", "bld_seed")

#: fewer calibration tokens than this many per projection input overfit the refit (measured on
#: SmolLM2: 2048 tokens for 1536 MLP channels made held-out perplexity worse than bias)
TOKENS_PER_INPUT = 8


class ReconstructOptions(BaseModel):
    """Mixed into a width method's config; each method sets its own ``reconstruct`` default."""

    #: what the projections reading removed heads/channels get: nothing, a mean bias, or a
    #: least-squares refit of their kept columns and bias
    reconstruct: Reconstruct = "none"
    #: least_squares fits the pruned layer to its own unpruned output on the pruned inputs
    #: (``self``) or to the dense model's output for the same tokens (``dense``).  ``self``
    #: measured better on SmolLM2 (flap+ls, 16,384 calibration tokens, held-out perplexity at
    #: 10 / 20 / 30% of non-embedding parameters: 43.93 / 57.66 / 105.94 against dense's
    #: 44.03 / 58.73 / 127.79; 82.33 against 118.75 with a third of the KV groups removed):
    #: chasing the dense output through already-pruned inputs over-corrects as errors grow
    reconstruct_target: Literal["dense", "self"] = "self"
    #: ridge damping, relative to the mean diagonal of the input covariance (GPTQ's percdamp);
    #: it pulls the kept weights toward their dense values.  1.0 measured best of 0.01 / 0.1 /
    #: 1.0 on SmolLM2 (flap, 20% of non-embedding parameters, 16,384 calibration tokens:
    #: held-out perplexity 60.73 / 59.22 / 58.73, bias compensation 64.19)
    reconstruct_damp: float = Field(1.0, ge=0, le=10)
    #: ``bld`` (block-local distillation, :mod:`.bld`): Adam steps per pruned block, one
    #: calibration batch a step, from the least-squares solution
    bld_steps: int = Field(32, ge=1, le=100_000)
    #: ``bld``: Adam's learning rate on the block's projections (float32 master weights)
    bld_lr: float = Field(1e-4, gt=0, le=1)
    #: ``bld``: seed of the order the calibration batches are drawn in
    bld_seed: int = 0

    @model_serializer(mode="wrap")
    def _bld_keys_only_for_bld(self, handler):
        """The ``bld_*`` keys are dumped (pinned, fingerprinted) only with ``reconstruct: bld``:
        projects pinned before they existed keep their fingerprints."""
        data = handler(self)
        if isinstance(data, dict) and data.get("reconstruct") != "bld":
            for key in BLD_KEYS:
                data.pop(key, None)
        return data


def full_weight(solved: torch.Tensor, kept: torch.Tensor, n: int) -> torch.Tensor:
    """``[out, n + 1]`` with the solved kept columns and bias, zeros at the removed columns."""
    out = solved.new_zeros(solved.shape[0], n + 1)
    out[:, kept] = solved[:, :-1]
    out[:, n] = solved[:, -1]
    return out


def without_columns(weight: torch.Tensor, removed) -> torch.Tensor:
    """A copy of ``[W, b]`` with the ``removed`` input columns zero; all of it, bias too, when
    every column goes (a removed block passes nothing on, not even a bias)."""
    if len(removed) == weight.shape[1] - 1:
        return weight.new_zeros(weight.shape)
    out = weight.clone()
    out[:, removed] = 0
    return out


def least_squares_solutions(layers: Layers, plan: Plan, reference: str, damp: float, ui=SILENT,
                            journal: Journal = Journal(), bld=None) -> dict[str, Solution]:
    """Every pruned projection's least-squares solution, layer by layer (sequential); the
    projections the plan leaves alone are not recorded at all.  With a ``journal`` folder the
    pass resumes per block from ``<folder>/layers``.  ``bld``: a config with ``bld_steps``,
    ``bld_lr``, ``bld_seed`` — each pruned block then distilled from its solution."""
    adapter, removals = layers.adapter, {}
    for i in range(adapter.num_layers):
        for name, block in (("o_proj", adapter.attention(i)), ("down_proj", adapter.mlp(i))):
            removed = [] if block is None else removed_channels(adapter, plan, i, name)
            if removed:
                removals[f"layers.{i}.{name}"] = removed

    def solve(i, name, weight, moments):
        removed = removals[f"layers.{i}.{name}"]
        n = weight.shape[1] - 1
        if len(removed) == n:  # the whole block goes: nothing to fit
            return Solution(removed, without_columns(weight, removed))
        gone = set(removed)
        kept = torch.tensor([c for c in range(n) if c not in gone], dtype=torch.long)
        solved = solve_kept(weight, moments.h, moments.g, kept, damp, f"layers.{i}.{name}")
        return Solution(removed, full_weight(solved, kept.to(solved.device), n))

    settings = None if bld is None else (bld.bld_steps, bld.bld_lr, bld.bld_seed)
    checkpoint = layer_checkpoint(layers, journal, "layers", removals, reference, damp, settings)
    return sequential_pass(layers, solve, reference, ui, wanted=removals,
                           checkpoint=checkpoint,
                           description="least-squares refit" if bld is None else "bld",
                           refine=None if bld is None else block_distiller(adapter, *settings))


def block_distiller(adapter: Adapter, steps: int, lr: float, seed: int):
    """The sequential pass's ``refine`` for ``bld``: a whole removed block stays removed.
    Under ``torchrun`` every rank runs the pass on every window, so the ranks train each block
    together, data-parallel over its batches' rows (:mod:`.bld`)."""
    group = distributed.current()

    def refine(i, name, run_block, solution, inputs):
        if len(solution.removed) == solution.weight.shape[1] - 1:
            return solution
        module = adapter.attention(i) if name == "o_proj" else adapter.mlp(i)
        prefix = next(n for n, m in adapter.model.named_modules() if m is module)
        return distill_block(module, getattr(adapter, name)(i), solution, run_block, inputs,
                             steps, lr, seed, prefix, group)

    return refine


@torch.no_grad()
def write_back(adapter: Adapter, solutions: dict[str, Solution]) -> dict[str, torch.Tensor]:
    """Copy the solved weights (and what distillation trained) into the dense model (surgery
    slices the kept columns next) and return the bias *changes* in ``apply_plan``'s ``biases``
    form."""
    biases = {}
    model = adapter.model
    for key, solution in solutions.items():
        for name, value in solution.trained.items():
            target = model.get_parameter(name)
            target.copy_(value.to(target.device, target.dtype))
        _, i, name = key.split(".")
        linear = getattr(adapter, name)(int(i))
        linear.weight.copy_(solution.weight[:, :-1].to(linear.weight.device, linear.weight.dtype))
        bias = solution.weight[:, -1].to(torch.float64)  # a new, contiguous vector
        if linear.bias is not None:
            bias = bias - linear.bias.detach().to(bias.device, torch.float64)
        biases[key] = bias.to(linear.weight.dtype)
    return biases


def reconstruction_biases(config, inputs: Inputs, plan: Plan, stats, compensation):
    """The ``biases`` for ``apply_plan`` that ``config.reconstruct`` asks for (``None``: none);
    ``least_squares`` and ``bld`` also rewrite the kept weights of ``inputs.model`` in place."""
    adapter = inputs.adapter
    if config.reconstruct == "none":
        return None
    if config.reconstruct == "bias":
        return compensation(adapter, plan, stats)
    if plan.hidden_channels is not None:
        raise UserError(f"method.reconstruct: {config.reconstruct} cannot follow a pruned hidden "
                        "size (set method.prune_hidden: false, or reconstruct: bias / none)")
    tokens = inputs.require_tokens(f"method.reconstruct: {config.reconstruct}")
    ui = inputs.ui
    widest = max(adapter.intermediate_size(i) for i in range(adapter.num_layers))
    if tokens.numel() < TOKENS_PER_INPUT * widest:
        ui.warn(f"method.reconstruct: {config.reconstruct} fits up to {widest + 1} weights per "
                f"output row on {tokens.numel()} calibration tokens and will overfit; calibrate "
                "on at least "
                f"{TOKENS_PER_INPUT * widest} tokens or raise method.reconstruct_damp")
    solutions = least_squares_solutions(
        inputs.layers, plan, config.reconstruct_target,
        config.reconstruct_damp, ui, inputs.journal,
        config if config.reconstruct == "bld" else None)
    return write_back(adapter, solutions)
