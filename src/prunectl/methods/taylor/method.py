"""``method: taylor`` — LLM-Pruner (Ma et al., NeurIPS 2023; horseee/LLM-Pruner ``hf_prune.py``).

``score`` takes gradients of the LM loss on the calibration tokens (the recipe's ``calibration``
section governs how many samples of how many tokens; ``recipes/llama2-7b-llm-pruner.yaml`` mirrors
the reference's 10 samples of 64 tokens) and scores every coupled structure; ``search`` turns the
scores into a plan removing the target's parameters (``target.ratio_of: units`` is the
reference's ``pruning_ratio``: every pruned layer keeps that share of heads and channels);
``apply`` is the default
surgery.  ``scope: block`` prunes attention heads and MLP channels of layers
``[layer_start, layer_end)`` (reference: 4 to 30 of Llama's 32: ``layer_end = num_layers - 2``);
``scope: channel`` prunes hidden dimensions of the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.plan import Plan
from prunectl.methods.target import resolve_params_target
from prunectl.methods.taylor import groups, selection
from prunectl.methods.taylor.importance import GRADIENT_KINDS, random_importance
from prunectl.methods.width.hooks import ReconstructHooks
from prunectl.methods.width.reconstruct import ReconstructOptions
from prunectl.methods.width.units import HeadUnit, check_width_model
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.alignment import alignment
from prunectl.modeling.structure import from_model
from prunectl.schema import Seed

if TYPE_CHECKING:
    from prunectl.methods.inputs import Inputs


class TaylorConfig(MethodConfig, ReconstructOptions):
    name: Literal["taylor"] = "taylor"
    scope: Literal["block", "channel"] = "block"
    layer_start: int = Field(4, ge=0)
    layer_end: int | None = Field(None, ge=1)  # None: num_layers - 2
    importance: Literal["element1", "element2", "vector", "l1", "l2", "random"] = "element1"
    aggregation: Literal["sum", "mean", "max", "prod"] = "sum"
    ranking: Literal["local", "global"] = "local"
    head_unit: HeadUnit = "query_head"
    grad_batch_size: int = Field(1, ge=1)  # calibration samples per backward pass
    gradient_checkpointing: bool = False
    seed: Seed = 42  # for importance: random
    #: kept MLP channels per layer: multiples of this (or all); unset: modeling.alignment's default
    round_to: int | None = Field(None, ge=1)


class TaylorMethod(ReconstructHooks, Method):
    name = "taylor"
    Config = TaylorConfig
    targets = frozenset({"params", "units"})

    @property
    def calibration(self) -> str:
        """``gradients`` for the gradient criteria; the others still take the tokens, which a
        ``least_squares`` reconstruction reads in ``apply``."""
        return "gradients" if self.config.importance in GRADIENT_KINDS else "tokens"

    def check(self, config) -> None:
        check_width_model(config.model_type, self.name, attention_only_ok=False)

    def check_target(self, inputs: Inputs) -> None:
        layers = self.layers(inputs.adapter) if self.config.scope == "block" else None
        resolve_params_target(inputs.target, inputs.model, self.name, layers)

    def layers(self, adapter: Adapter) -> range:
        """The pruned layers; a range outside the model is a user error naming the keys."""
        cfg = self.config
        n = adapter.num_layers
        end = n - 2 if cfg.layer_end is None else cfg.layer_end
        if not 0 <= cfg.layer_start < end <= n:
            raise UserError(
                f"method.layer_start={cfg.layer_start} / layer_end={end} select no layers of a "
                f"{n}-layer model; use 0 <= layer_start < layer_end <= {n}"
            )
        return range(cfg.layer_start, end)

    def score(self, inputs: Inputs, stats: dict) -> dict[str, torch.Tensor]:
        cfg = self.config
        adapter = inputs.adapter
        layers = self.layers(adapter) if cfg.scope == "block" else range(0)
        if cfg.importance == "random":
            return self._random_scores(adapter, layers)
        store = None
        if cfg.importance in GRADIENT_KINDS:
            tokens = inputs.require_tokens("method taylor")
            gradients = inputs.gradients
            gradients.require_whole_model(f"taylor importance {cfg.importance!r}")
            weights = groups.scored_parameters(adapter, cfg.scope, layers)
            store, loss = gradients.accumulate(weights, cfg.importance == "element2",
                                               cfg.grad_batch_size, cfg.gradient_checkpointing,
                                               inputs.ui)
            inputs.ui.info(f"taylor: calibration loss {loss:.4f} over {tokens.shape[0]} samples")
        score = groups.scorer(cfg.importance, store, adapter.family.norm_offset)
        with torch.no_grad():
            if cfg.scope == "channel":
                return {"hidden": groups.hidden_scores(adapter, score, cfg.aggregation).cpu()}
            scores = {}
            for i in layers:
                scores[f"layers.{i}.heads"] = groups.head_scores(
                    adapter, i, score, cfg.head_unit, cfg.aggregation
                ).cpu()
                scores[f"layers.{i}.channels"] = groups.channel_scores(
                    adapter, i, score, cfg.aggregation
                ).cpu()
        return scores

    def _random_scores(self, adapter: Adapter, layers: range) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed)
        if self.config.scope == "channel":
            return {"hidden": random_importance(adapter.hidden_size, generator)}
        scores, structure = {}, from_model(adapter.model)
        for i in layers:
            costs = selection.LayerCosts(structure, i)
            units = costs.scored(self.config.head_unit)
            scores[f"layers.{i}.heads"] = random_importance(units, generator)
            scores[f"layers.{i}.channels"] = random_importance(costs.intermediate, generator)
        return scores

    def search(self, inputs: Inputs, scores: dict[str, torch.Tensor]) -> Plan:
        cfg = self.config
        adapter = inputs.adapter
        layers = self.layers(adapter) if cfg.scope == "block" else None
        goal = resolve_params_target(inputs.target, inputs.model, self.name, layers)
        total, target = goal.total, goal.remove
        achieved = {"params_total": total, "target_ratio": goal.ratio, **goal.achieved()}
        if cfg.scope == "channel":
            weights = groups.hidden_weights(adapter)
            per_channel = sum(w.numel() // w.shape[dim] for w, dim in weights)
            if goal.unit_ratio is not None:  # a share of the hidden channels
                target = round(goal.unit_ratio * adapter.hidden_size) * per_channel
            multiple = alignment(cfg.round_to, [adapter.hidden_size])
            kept = selection.hidden_plan(adapter, scores["hidden"], per_channel, target, multiple)
            achieved.update(hidden_kept=len(kept), hidden=adapter.hidden_size)
            layer_plans, notes = {}, []
        else:
            choices, how = selection.block_plan(
                adapter, scores, layers, cfg.head_unit, cfg.ranking, target,
                keep=None if goal.unit_ratio is None else 1 - goal.unit_ratio,
            )
            multiple = alignment(cfg.round_to, [adapter.intermediate_size(i) for i in choices])
            choices = selection.round_choices(adapter, choices, scores, multiple, target)
            layer_plans, notes = selection.layer_plans(adapter, choices)
            achieved.update(
                how,
                heads_kept={i: len(c.q_heads) for i, c in choices.items()},
                kv_heads_kept={i: len(c.kv_heads) for i, c in choices.items()},
                channels_kept={i: len(c.channels) for i, c in choices.items()},
            )
        plan = Plan(method="taylor", layers=layer_plans,
                    hidden_channels=kept if cfg.scope == "channel" else None, notes=notes)
        pruned = cost.account(from_model(inputs.model), plan,
                              biased=cfg.reconstruct != "none")
        removed = total - pruned.params["total"]
        achieved.update(params_removed_estimate=removed, ratio_estimate=removed / total)
        if goal.unit_ratio is None and abs(removed - target) > 0.01 * total:
            plan.notes.append(
                f"removes about {removed / total:.1%} of the parameters, not "
                f"{target / total:.1%} ({goal.label}): the pruned "
                "layers cannot give more (widen layer_start/layer_end) or the units are coarse"
            )
        plan.achieved = achieved
        return plan
