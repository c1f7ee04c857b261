"""``method: slimgpt`` — SlimGPT (Ling et al., NeurIPS 2024, arXiv 2412.18110).

``search`` runs the sequential pass (:mod:`prunectl.methods.width.sequential`): layer by
layer, on inputs that went through the already pruned layers, each ``o_proj`` loses its head units
and each ``down_proj`` its MLP channels by greedy OBS error with the kept columns updated after
every batch (:mod:`prunectl.methods.width.obs`); how many each layer loses comes from the
allocation (:mod:`.allocation`: ``ipr`` by default, ``uniform``, or FLAP's ``AL-AM`` counts).  The plan
records which units went.  ``apply`` re-solves the kept weights with the shared least-squares
reconstruction: OBS removals compose into the constrained least-squares optimum on the same
statistics, so with ``reconstruct_target: self`` (the default, as the reference) that gives the
weights SlimGPT's updates give, without storing them between steps; ``dense`` fits the dense
model's outputs instead.  Head units are whole KV groups (GQA) or heads (MHA).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.methods.inputs import Inputs
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.slimgpt import allocation
from prunectl.methods.target import resolve_params_target
from prunectl.methods.width.hooks import ReconstructHooks
from prunectl.methods.width.metrics import model_scores
from prunectl.methods.width.obs import greedy_prune, mlp_batches
from prunectl.methods.width.reconstruct import Reconstruct, ReconstructOptions
from prunectl.methods.width.selection import LayerScores, round_selection, select
from prunectl.methods.width.sequential import Solution, layer_checkpoint, sequential_pass
from prunectl.methods.width.units import (
    check_round_to,
    check_width_model,
    layer_plan,
    layer_shape,
)
from prunectl.modeling import cost
from prunectl.modeling.alignment import alignment
from prunectl.modeling.structure import Structure, from_model


class SlimGPTConfig(MethodConfig, ReconstructOptions):
    name: Literal["slimgpt"] = "slimgpt"
    #: per-layer pruning ratios: Incremental Pruning Ratio, one ratio, or FLAP's adaptive counts
    allocation: Literal["ipr", "uniform", "AL-AM"] = "ipr"
    #: ipr: the first layer's ratio as a fraction of the last layer's (reference 0.06 / 0.3)
    ipr_first: float = Field(0.2, ge=0, le=1)
    #: head units and channels every layer keeps
    min_kept: int = Field(1, ge=1)
    #: kept MLP channels per layer are multiples of this (or all); unset: modeling.alignment's
    #: default (64, smaller for small widths); 1 keeps the exact counts of the reference
    round_to: int | None = Field(None, ge=1)
    reconstruct: Reconstruct = "least_squares"
    #: also the OBS damping of the selection: SlimGPT's (SparseGPT's) percdamp, not the width
    #: methods' refit default
    reconstruct_damp: float = Field(0.01, ge=0, le=10)


class SlimGPTMethod(ReconstructHooks, Method):
    name = "slimgpt"
    Config = SlimGPTConfig
    calibration = "layer_inputs"
    targets = frozenset({"params"})

    def check(self, config) -> None:
        check_width_model(config.model_type, self.name, attention_only_ok=False)

    def check_target(self, inputs: Inputs) -> None:
        resolve_params_target(inputs.target, inputs.model, self.name)

    @property
    def uses_statistics(self) -> bool:
        return self.config.allocation == "AL-AM" or self.config.reconstruct == "bias"

    def score(self, inputs: Inputs, stats) -> dict[str, torch.Tensor]:
        """FLAP's WIFV scores for ``AL-AM``; OBS errors need the pruned stream, so the other
        allocations score nothing here."""
        if self.config.allocation != "AL-AM":
            return {}
        return model_scores(inputs.adapter, stats, "WIFV", square_attention=True, adaptive=True)

    def _counts(self, dense: Structure, shapes, scores, budget) -> tuple[list[tuple[int, int]], dict]:
        cfg = self.config
        multiple = alignment(cfg.round_to, [s.intermediate for s in shapes])
        check_round_to(multiple, dict(enumerate(s.intermediate for s in shapes)))
        if cfg.allocation == "AL-AM":
            if "layers.0.heads" not in scores:
                raise UserError("scores lack FLAP's AL-AM scores; re-run `prunectl score --force`")
            layers = {i: LayerScores(s, scores[f"layers.{i}.heads"], scores[f"layers.{i}.channels"])
                      for i, s in enumerate(shapes)}
            sel = select("AL-AM", layers, budget, min_kept=cfg.min_kept)
            sel = round_selection(layers, sel, budget, multiple, cfg.min_kept)
            counts = [(len(sel.heads.get(i, [])), len(sel.channels.get(i, [])))
                      for i in range(len(shapes))]
            return counts, {"allocation": "AL-AM"}
        weights = allocation.shape_weights(cfg.allocation, len(shapes), cfg.ipr_first)
        counts, scale = allocation.solve_counts(
            shapes, weights, budget, lambda c: _removed(dense, shapes, c), cfg.min_kept,
            multiple)
        ratios = [round(min(scale * w, 1.0), 4) for w in weights]
        return counts, {"allocation": cfg.allocation, "layer_ratios": ratios}

    def search(self, inputs: Inputs, scores) -> Plan:
        inputs.require_tokens("slimgpt")
        adapter, model = inputs.adapter, inputs.model
        goal = resolve_params_target(inputs.target, model, self.name)
        structure = from_model(model)
        shapes = [layer_shape(adapter, i, "kv_group", structure) for i in range(adapter.num_layers)]
        counts, how = self._counts(structure, shapes, scores, goal.remove)
        removed = self._prune(inputs, shapes, counts)
        plan = Plan(method=self.name)
        for i, s in enumerate(shapes):
            heads, channels = removed.get((i, "o_proj"), []), removed.get((i, "down_proj"), [])
            lp = layer_plan(s, torch.zeros(s.num_heads), sorted(heads), sorted(channels))
            if lp != LayerPlan():
                plan.layers[i] = lp
        pruned = cost.account(structure, plan, biased=self.config.reconstruct != "none")
        plan.achieved = {
            **pruned.achieved(goal.dense), **goal.achieved(),
            "head_unit": "kv_group",
            "head_units_removed": sum(h for h, _ in counts),
            "mlp_channels_removed": sum(c for _, c in counts), **how,
        }
        return plan

    def _prune(self, inputs: Inputs, shapes, counts) -> dict[tuple[int, str], list[int]]:
        """Greedy OBS over the sequential pass (resumable per block in ``search/layers/``);
        which head units / channels each layer lost."""
        damp = self.config.reconstruct_damp

        def solve(i, name, weight, moments):
            heads, channels = counts[i]
            s = shapes[i]
            if name == "o_proj":
                width = s.group_size * s.head_dim  # one KV group's query heads
                groups = torch.arange(s.num_kv_heads * width).reshape(s.num_kv_heads, width)
                result = greedy_prune(weight, moments.h, groups.to(weight.device), heads,
                                      damp=damp)
                columns = groups[result.removed].reshape(-1).tolist()
            else:
                groups = torch.arange(s.intermediate).reshape(-1, 1)
                result = greedy_prune(weight, moments.h, groups.to(weight.device), channels,
                                      mlp_batches(channels), damp=damp)
                columns = result.removed
            return Solution(sorted(columns), result.weight)

        wanted = {f"layers.{i}.{name}" for i, (heads, channels) in enumerate(counts)
                  for name, n in (("o_proj", heads), ("down_proj", channels)) if n}
        checkpoint = layer_checkpoint(inputs.layers, inputs.journal, "layers", counts, damp)
        solutions = sequential_pass(inputs.layers, solve, "self", inputs.ui, wanted=wanted,
                                    checkpoint=checkpoint, description="slimgpt search")
        removed = {}
        for key, solution in solutions.items():  # units from columns: resumed layers have both
            _, i, name = key.split(".")
            s = shapes[int(i)]
            width = s.group_size * s.head_dim if name == "o_proj" else 1
            removed[(int(i), name)] = sorted({c // width for c in solution.removed})
        return removed


def _removed(dense: Structure, shapes: list, counts: list[tuple[int, int]]) -> int:
    """Parameters removing ``counts`` (KV groups, channels) per layer takes, every pruned
    projection gaining a bias (the allocation's objective, whatever ``reconstruct`` is)."""
    layers = tuple(
        replace(layer, heads=layer.heads - h * s.group_size, kv_heads=layer.kv_heads - h,
                intermediate=layer.intermediate - c, o_bias=layer.o_bias or h > 0,
                down_bias=layer.down_bias or c > 0)
        for layer, s, (h, c) in zip(dense.layers, shapes, counts))
    return cost.parameters(dense)["total"] - cost.parameters(replace(dense, layers=layers))["total"]
