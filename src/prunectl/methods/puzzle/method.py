"""``method: puzzle``: score a library of block variants, solve for one variant per block within
the budgets, verify the best few solutions with true calibration perplexity (see the package
docstring for the library and ``docs/notes/puzzle.md``).

``search`` solves the MILP (:mod:`.solve`) for the optimum and ``method.verify - 1`` diverse
next-best solutions, measures each one's calibration perplexity (:mod:`.verify`; every result
journaled in ``search/verify.jsonl`` so a killed search resumes where it stopped) and keeps the
lowest.  ``apply`` is every width method's (least squares by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from prunectl.errors import UserError
from prunectl.methods.base import Method
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.puzzle import costs as variant_costs
from prunectl.methods.puzzle.config import PuzzleConfig
from prunectl.methods.puzzle.solve import Choice, Infeasible, candidates, check_feasible
from prunectl.methods.width.hooks import ReconstructHooks
from prunectl.methods.width.units import check_width_model
from prunectl.modeling.adapters import family_for
from prunectl.modeling.structure import from_model

if TYPE_CHECKING:
    import torch

    from prunectl.methods.inputs import Inputs

VERIFY_JOURNAL = "verify.jsonl"


class PuzzleMethod(ReconstructHooks, Method):
    name = "puzzle"
    Config = PuzzleConfig
    calibration = "tokens"
    targets = frozenset({"params", "budget"})
    #: ``search --sweep`` solves one plan per parameter budget and plots them
    supports_sweep = True
    #: the library does not depend on them (its inputs are dense: both targets fit alike)
    search_only_keys = frozenset({"verify", "diversity", "reconstruct_target"})

    def check(self, config) -> None:
        if family_for(config.model_type).moe:
            raise UserError(f"method puzzle chooses dense MLP widths; '{config.model_type}' has "
                            "mixture-of-experts layers: use method: reap")
        check_width_model(config.model_type, self.name, attention_only_ok=False)

    def check_target(self, inputs: Inputs) -> None:
        """The budgets against the library's cheapest choice, from the shapes alone."""
        from prunectl.methods.puzzle.variants import mlp_kept

        structure = from_model(inputs.model)
        widths = mlp_kept(structure.layers[0].intermediate, self.config.mlp_widths)
        costs = variant_costs.variant_costs(structure, np.array([widths] * len(structure.layers)),
                                            biases=self.config.reconstruct != "none")
        check_feasible(costs, budget_caps(inputs, costs)[0])

    def score(self, inputs: Inputs, stats: dict) -> dict[str, torch.Tensor]:
        from prunectl.methods.puzzle.library import build_library

        return build_library(inputs, self.config)

    def search(self, inputs: Inputs, scores: dict[str, torch.Tensor]) -> Plan:
        return self._solve(inputs, scores, None)

    def references(self, inputs: Inputs, scores: dict[str, torch.Tensor]) -> dict[str, Plan]:
        """The same library and budgets solved with whole blocks only (keep or remove: a
        block-removal plan) and with widths only (no block removed), verified the same way:
        the one-method references a sweep plots beside puzzle.  One the budgets rule out is
        left out."""
        attn, mlp = scores["attn.score"], scores["mlp.channels"]
        width = mlp.shape[1] - 1
        groups = np.arange(attn.shape[1])[None].repeat(attn.shape[0], 0)
        whole = (groups == 0) | (groups == attn.shape[1] - 1)
        kept = mlp.numpy()
        restrictions = {
            "blocks": (whole, (kept == 0) | (kept == kept[:, width:])),
            "widths": (groups > 0, kept > 0),
        }
        plans = {}
        for label, allowed in restrictions.items():
            try:
                plans[label] = self._solve(inputs, scores, allowed)
            except Infeasible as error:
                inputs.ui.warn(f"reference '{label}' left out: {error}")
        return plans

    def _solve(self, inputs: Inputs, scores, allowed) -> Plan:
        cfg, model = self.config, inputs.model
        attn_score, mlp_score = scores["attn.score"].double().numpy(), \
            scores["mlp.score"].double().numpy()
        channels = scores["mlp.channels"].numpy()
        structure = from_model(model)
        costs = variant_costs.variant_costs(structure, channels,
                                            next(model.parameters()).element_size(),
                                            biases=cfg.reconstruct != "none")
        group = [layer.heads // layer.kv_heads for layer in structure.layers]
        caps, target_notes = budget_caps(inputs, costs)
        found = candidates(attn_score, mlp_score, costs, caps, max(cfg.verify, 1),
                           cfg.diversity, allowed)
        ppl = self._verify(inputs, scores, found, group) if cfg.verify else {}
        best = min(found, key=lambda c: (ppl[c.key], c.score)) if ppl else found[0]
        curve = [{"library_score": c.score, "calibration_ppl": ppl[c.key], "choices": c.key}
                 for c in found] if ppl else []
        plan = choice_plan(best, scores, group, curve=curve)
        plan.achieved.update(achieved(costs, best, caps) | target_notes)
        plan.achieved["library_score"] = best.score
        if ppl:
            plan.achieved["calibration_ppl"] = ppl[best.key]
        return plan

    def _verify(self, inputs: Inputs, scores, found: list[Choice],
                group: list[int]) -> dict[str, float]:
        """Calibration perplexity of each candidate, from the journal when recorded."""
        from prunectl.methods.puzzle.verify import calibration_perplexity

        key = inputs.journal.key
        done = {r["choices"]: r["calibration_ppl"]
                for r in inputs.journal.records(VERIFY_JOURNAL) if r.get("key") == key}
        stats = None
        for i, choice in enumerate(found):
            if choice.key in done:
                continue
            if self.config.reconstruct == "bias" and stats is None:
                stats = self.statistics(inputs)
            inputs.ui.info(f"verifying candidate {i + 1}/{len(found)} "
                           f"(library score {choice.score:.4g})")
            ppl = calibration_perplexity(self.config, inputs, choice_plan(choice, scores, group),
                                         stats)
            inputs.journal.append({"key": key, "choices": choice.key, "calibration_ppl": ppl,
                                   "library_score": choice.score}, VERIFY_JOURNAL)
            done[choice.key] = ppl
        return done


def budget_caps(inputs: Inputs, costs: variant_costs.Costs) -> tuple[dict[str, int], dict]:
    """The most each budgeted kind may total (dense less what the target removes), and what
    ``achieved`` records about the target."""
    from prunectl.methods.target import resolve_params_target

    target, caps, notes = inputs.target, {}, {}
    if target.params_ratio is not None or target.params is not None:
        resolved = resolve_params_target(target, inputs.model, "puzzle")
        caps["params"] = costs.dense["params"] - resolved.remove
        notes.update(resolved.achieved())
    for kind, ratio in (("kv_cache", target.kv_cache_ratio), ("flops", target.flops_ratio)):
        if ratio is not None:
            caps[kind] = costs.dense[kind] - round(ratio * costs.dense[kind])
            notes[f"target_{kind}_ratio"] = ratio
    if not caps:
        raise UserError("method puzzle needs a budget: target.params_ratio (--ratio 0.2), "
                        "target.params, target.kv_cache_ratio or target.flops_ratio")
    return caps, notes


def achieved(costs: variant_costs.Costs, choice: Choice, caps: dict[str, int]) -> dict:
    """Per kind the dense and kept totals and the share removed, as the cost model counts."""
    out = {}
    for kind in variant_costs.KINDS:
        kept = costs.total(kind, list(choice.attn), list(choice.mlp))
        out |= {f"{kind}_dense": costs.dense[kind], f"{kind}_kept": kept,
                f"{kind}_ratio_removed": round(1 - kept / costs.dense[kind], 6)}
    out["params_removed"] = costs.dense["params"] - out["params_kept"]
    out["budgets"] = dict(caps)
    return out


def choice_plan(choice: Choice, scores: dict[str, torch.Tensor], group: list[int],
                **fields) -> Plan:
    """The plan of a :class:`Choice`: kept KV groups with all their ``group[l]`` query heads
    and kept MLP channels, in dense numbering; a layer left dense is absent."""
    order, mlp_order, channels = scores["attn.order"], scores["mlp.order"], scores["mlp.channels"]
    layers = {}
    for i, (g, w) in enumerate(zip(choice.attn, choice.mlp)):
        c = int(channels[i, w])
        kept: dict = {"attention": g > 0, "mlp": c > 0}
        if 0 < g < order.shape[1]:
            kept["kv_heads"] = sorted(int(k) for k in order[i, :g])
            kept["q_heads"] = [h for k in kept["kv_heads"]
                               for h in range(k * group[i], (k + 1) * group[i])]
        if 0 < c < mlp_order.shape[1]:
            kept["mlp_channels"] = sorted(int(k) for k in mlp_order[i, :c])
        if (lp := LayerPlan(**kept)) != LayerPlan():
            layers[i] = lp
    return Plan(method="puzzle", layers=layers, **fields)
