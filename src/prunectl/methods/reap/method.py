"""``method: reap``: remove whole routed experts by REAP saliency or one of its baselines.

calibrate collects four sums per expert in one layer-by-layer pass (resumable per layer);
score turns them into ``layers.N.experts`` saliencies by ``method.criterion``; search removes
the lowest-scoring experts of every MoE layer (ties: lower index first, i.e. kept last); apply
drops their stacked weights and router rows.  Shared experts (Qwen2-MoE) are never candidates.
"""

from __future__ import annotations

from typing import Literal

import torch

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.methods.inputs import Inputs
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.reap.collect import collect_expert_stats, stat_prefix
from prunectl.methods.reap.saliency import ExpertStats
from prunectl.methods.reap.targets import experts_to_remove, moe_layers
from prunectl.modeling import cost
from prunectl.modeling.adapters import FAMILIES, family_for
from prunectl.modeling.structure import from_model

MOE_TYPES = [t for f in FAMILIES if f.moe for t in f.model_types]


class ReapConfig(MethodConfig):
    name: Literal["reap"] = "reap"
    #: reap (gate x output norm, mean over routed tokens), frequency, gate (mean gate value), ean
    criterion: Literal["reap", "frequency", "gate", "ean"] = "reap"


class ReapMethod(Method):
    """Router-weighted expert activation pruning (Lasby et al., 2025)."""

    name = "reap"
    Config = ReapConfig
    calibration = "layer_inputs"
    uses_statistics = True
    targets = frozenset({"experts", "params"})

    def check(self, config) -> None:
        if not family_for(config.model_type).moe:
            raise UserError(f"method reap removes experts, and '{config.model_type}' has none; "
                            f"mixture-of-experts model types: {', '.join(MOE_TYPES)}")

    def statistics(self, inputs: Inputs):
        adapter = inputs.adapter
        experts_to_remove(adapter, inputs.target)  # a bad target fails before the pass
        return collect_expert_stats(inputs.layers, inputs.journal, inputs.ui)

    def score(self, inputs: Inputs, stats) -> dict[str, torch.Tensor]:
        adapter = inputs.adapter
        scores = {}
        for i in moe_layers(adapter):
            layer = ExpertStats.from_dict(stats, stat_prefix(i))
            if layer is None or layer.count.numel() != adapter.num_experts(i):
                raise UserError(f"calibration statistics lack {stat_prefix(i)} for this model; "
                                "re-run `prunectl calibrate --force`")
            scores[stat_prefix(i)] = layer.saliency(self.config.criterion)
        return scores

    def search(self, inputs: Inputs, scores) -> Plan:
        adapter = inputs.adapter
        removals = experts_to_remove(adapter, inputs.target)
        plan = Plan(method=self.name)
        for i, n in removals.items():
            saliency = scores.get(stat_prefix(i))
            if saliency is None or saliency.numel() != adapter.num_experts(i):
                raise UserError(f"scores lack {stat_prefix(i)}; re-run `prunectl score --force`")
            order = sorted(range(saliency.numel()), key=lambda e: (float(saliency[e]), e))
            gone = set(order[:n])
            kept = [e for e in range(saliency.numel()) if e not in gone]
            plan.layers[i] = LayerPlan(experts=kept)
        dense = from_model(inputs.model)
        plan.achieved = {
            **cost.account(dense, plan).achieved(cost.parameters(dense)),
            "criterion": self.config.criterion,
            "experts_removed": sum(removals.values()),
            "moe_layers": len(removals),
        }
        return plan
