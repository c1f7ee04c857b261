"""A nested removal order of whole blocks: candidates, their sizes, when to stop, plans, prefixes.

Shared by ``block`` (greedy search), ``shortgpt`` (one-shot order) and the apply step's
``--blocks``: a method produces an ordered list of removed blocks, and any prefix of it is a
valid plan, so ``apply --blocks K`` never searches again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunectl.errors import UserError
from prunectl.plan import Plan, parse_block_name, plan_from_removals
from prunectl.methods.target import resolve_params_target
from prunectl.modeling.cost import achieved_params


def candidate_names(num_layers: int, block_type: str) -> list[str]:
    """Candidates in their canonical order, which also breaks ties between equal perplexities.

    ``mix`` lists every attention block before every MLP block, as the reference's
    ``block_search.py`` does, so an exact tie resolves to the same block there and here.
    """
    attn = [f"layers.{i}.attn" for i in range(num_layers)]
    mlp = [f"layers.{i}.mlp" for i in range(num_layers)]
    table = {
        "mha": attn,
        "mlp": mlp,
        "mix": attn + mlp,
        "layer": [f"layers.{i}" for i in range(num_layers)],
    }
    return table[block_type]


def candidate_parameters(structure, name: str) -> int:
    """Parameters a candidate holds (its norm included), from the shared cost model."""
    from prunectl.modeling.cost import block_parameters

    index, kind = parse_block_name(name, len(structure.layers))
    counts = block_parameters(structure, index)
    if kind == "layer":
        return counts["attn"] + counts["mlp"]
    return counts[kind]


@dataclass
class StopRule:
    """When to stop: after ``blocks`` removals, or once ``params_ratio`` of all params is gone."""

    blocks: int | None = None
    params_ratio: float | None = None

    def reached(self, decisions: list[dict]) -> bool:
        if self.blocks is not None:
            return len(decisions) >= self.blocks
        if self.params_ratio is not None:
            return bool(decisions) and decisions[-1]["params_ratio"] >= self.params_ratio
        return False


@dataclass
class ParameterCounts:
    total: int
    non_embedding: int
    per_candidate: dict[str, int]

    def removal(self, removed: int) -> dict[str, Any]:
        """``params_removed`` and its two ratios, as every decision records them."""
        achieved = achieved_params({"total": self.total, "non_embedding": self.non_embedding},
                                   removed)
        return {key: achieved[key]
                for key in ("params_removed", "params_ratio", "params_ratio_non_embedding")}


def candidate_counts(model, names: list[str]) -> ParameterCounts:
    """The model's parameter totals and what each of ``names`` would remove (through
    :func:`prunectl.modeling.cost.parameters`, the one accounting)."""
    from prunectl.modeling.cost import parameters
    from prunectl.modeling.structure import from_model

    structure = from_model(model)
    counts = parameters(structure)
    return ParameterCounts(
        total=counts["total"],
        non_embedding=counts["non_embedding"],
        per_candidate={name: candidate_parameters(structure, name) for name in names},
    )


def stop_rule(
    target_config: Any, model, names: list[str], params: ParameterCounts, unit: str
) -> StopRule:
    """The recipe's ``target`` as a stop rule, refusing targets the candidates cannot reach.

    A parameter target (any ``ratio_of`` but ``units``, or ``params``) becomes the share of all
    parameters it removes, which is what decisions record.
    """
    blocks = getattr(target_config, "blocks", None)
    if blocks is None and getattr(target_config, "params_ratio", None) is None \
            and getattr(target_config, "params", None) is None:
        raise UserError(
            f"target.blocks or target.params_ratio is required to remove {unit}s; "
            "set one, e.g. --blocks 8"
        )
    if blocks is not None:
        if blocks >= len(names):
            raise UserError(
                f"target.blocks={blocks} would remove every one of the {len(names)} candidate "
                f"{unit}s (the whole network); lower it to at most {len(names) - 1}"
            )
        return StopRule(blocks=blocks)
    if getattr(target_config, "ratio_of", "total") == "units":
        raise UserError(
            f"target.ratio_of: units is a share of heads and channels, which whole {unit}s "
            "are not; use ratio_of total, non_embedding or layers, or target.blocks"
        )
    goal = resolve_params_target(target_config, model, f"{unit} removal")
    reachable = sum(params.per_candidate.values()) / params.total
    if goal.remove / params.total > reachable:
        raise UserError(
            f"{goal.label} is out of reach: removing every candidate {unit} "
            f"removes {reachable:.4f} of the parameters; lower it"
        )
    return StopRule(params_ratio=goal.remove / params.total)


def prefix_length(decisions: list[dict], target: StopRule) -> int:
    """How many leading decisions the target asks for (all of them when it was not reached)."""
    for k in range(1, len(decisions) + 1):
        if target.reached(decisions[:k]):
            return k
    return len(decisions)


def _curve_point(k: int, record: dict) -> dict[str, Any]:
    point = {"blocks": k}
    for key in ("perplexity", "params_removed", "params_ratio", "params_ratio_non_embedding"):
        if key in record:
            point[key] = record[key]
    return point


def plan_from_decisions(
    method: str,
    decisions: list[dict],
    target: StopRule,
    num_layers: int,
    params: ParameterCounts,
    dense: dict[str, Any],
    notes: list[str] | None = None,
) -> Plan:
    """A plan removing the first K decisions (K from ``target``), carrying the whole order."""
    notes = list(notes or [])
    order = [d["removed"] for d in decisions]
    curve = [_curve_point(0, {**dense, "params_removed": 0, "params_ratio": 0.0,
                              "params_ratio_non_embedding": 0.0})]
    curve += [_curve_point(k, d) for k, d in enumerate(decisions, 1)]
    k = prefix_length(decisions, target)
    reached = decisions[k - 1]["params_ratio"] if k else 0.0
    if target.params_ratio is not None and reached > target.params_ratio:
        notes.append(
            f"whole blocks remove {reached:.4f} of the parameters "
            f"(target {target.params_ratio}): the first block count reaching the target"
        )
    plan = plan_from_removals(method, order, num_layers, removal_order=order, curve=curve,
                              notes=notes)
    return _with_prefix(plan, k, num_layers, params.total, params.non_embedding)


def _with_prefix(plan: Plan, k: int, num_layers: int, total: int, non_embedding: int) -> Plan:
    prefix = plan_from_removals(
        plan.method, plan.removal_order[:k], num_layers,
        removal_order=plan.removal_order, curve=plan.curve, notes=plan.notes,
    )
    point = plan.curve[k] if k < len(plan.curve) else {}
    prefix.achieved = {
        **{key: value for key, value in point.items() if key != "blocks"},
        "blocks": k,
        "params_total": total,
        "params_non_embedding": non_embedding,
    }
    return prefix


def plan_for_k(plan: Plan, k: int) -> Plan:
    """The plan removing only the first ``k`` blocks of ``plan``'s searched order.

    ``k`` beyond the searched length is a user error: the order must be searched further.
    """
    searched = len(plan.removal_order)
    if not searched:
        raise UserError(
            f"--blocks needs a block-removal order; the '{plan.method}' plan has none"
        )
    if k < 1:
        raise UserError(f"--blocks {k} removes nothing; give the number of blocks to remove "
                        f"(1 to {searched})")
    if k > searched:
        raise UserError(
            f"--blocks {k} exceeds the {searched} removals searched; run `prunectl search "
            f"--blocks {k}` to search further (recorded decisions are kept)"
        )
    num_layers = 1 + max(parse_block_name(n, 1 << 30)[0] for n in plan.removal_order)
    return _with_prefix(
        plan, k, num_layers,
        plan.achieved.get("params_total", 0), plan.achieved.get("params_non_embedding", 0),
    )
