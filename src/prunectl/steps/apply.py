"""``apply``: remove what the plan says, physically, and save the pruned model in the project."""

from __future__ import annotations

import torch

from prunectl.context import RunContext
from prunectl.digest import digest
from prunectl.io import write_json
from prunectl.methods.inputs import Journal
from prunectl.methods.registry import create_method
from prunectl.methods.removal_order import plan_for_k
from prunectl.modeling import cost
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model
from prunectl.modeling.structure import from_model, layer_rows, with_plan
from prunectl.steps import artifacts
from prunectl.steps.base import StepOutcome, StepResult, execute, recipe_sections, upstream
from prunectl.steps.inputs import method_inputs


def key(run: RunContext, blocks: int | None = None,
        budget: float | None = None) -> tuple[dict, list]:
    """The plan file is hashed, not only the search fingerprint: a hand-edited plan re-applies;
    so are the calibration files (statistics for every method, tokens for a reconstruction)."""
    sections = recipe_sections(run, "model", "method", "target")
    sections["apply"] = {"blocks": blocks} if budget is None else {"blocks": blocks,
                                                                   "budget": budget}
    if create_method(run.recipe.method).apply_uses_tokens:  # a reconstruction reads them
        sections["calibration"] = recipe_sections(run, "calibration")["calibration"]
    sections["calibration_step"] = upstream(run, "calibrate")
    return sections, [artifacts.plan_path(run, budget)]


def apply(run: RunContext, blocks: int | None = None, budget: float | None = None) -> StepResult:
    """Apply the searched plan (with ``budget``: that budget's plan of ``search --sweep``)."""
    method = create_method(run.recipe.method)
    if blocks is not None:  # a count the searched order cannot give: refused before any work
        plan_for_k(artifacts.plan(run, budget), blocks)

    def body() -> StepOutcome:
        plan = artifacts.plan(run, budget)
        model, tokenizer = artifacts.dense_model(run)
        if blocks is not None:
            plan = plan_for_k(plan, blocks)
        dense = count_parameters(model)
        shape = from_model(model)
        structure = layer_rows(with_plan(shape, plan))
        size = next(model.parameters()).element_size()
        accounts = {"dense": cost.account(shape, bytes_per_value=size),
                    "pruned": cost.account(shape, plan, bytes_per_value=size)}
        per_token = {name: {"kv_cache_bytes": a.kv_cache_bytes, "flops": a.flops}
                     for name, a in accounts.items()}
        empty = None if method.apply_uses_tokens else torch.empty(0, 0, dtype=torch.long)
        # a least-squares or bld pass resumes per block from apply/layers/ (gone when done),
        # only for this model, method and plan (the pass's own key adds tokens and settings)
        journal = Journal(run.project.path("apply"),
                          digest(recipe_sections(run, "model", "method"), str(run.dtype),
                                 plan.model_dump(mode="json")))
        inputs = method_inputs(run, method, model, None, tokens=empty, journal=journal)
        pruned = method.apply(inputs, plan, artifacts.statistics(run))
        artifacts.forget_dense(run)  # sliced in place: no longer the dense model
        directory = artifacts.path(run, artifacts.PRUNED)
        if run.dist.is_main:  # every rank keeps the pruned model in memory for the next steps
            save_model(pruned, tokenizer, directory)
        after = count_parameters(pruned)
        summary = {
            "params_dense": dense["total"],
            "params_pruned": after["total"],
            "params_ratio_removed": round(1 - after["total"] / dense["total"], 6),
            "non_embedding_ratio_removed": round(
                1 - after["non_embedding"] / dense["non_embedding"], 6
            ),
        }
        if blocks is not None or plan.removal_order:
            summary["blocks_removed"] = sum(
                (not row["attention"]) + (not row["mlp"]) for row in structure
            )
        if run.dist.is_main:
            write_json(
                directory / "prunectl.json",
                {"dense": dense, "pruned": after, "per_layer": structure,
                 "dense_per_layer": layer_rows(shape), "per_token": per_token,
                 "plan": plan.model_dump(mode="json"), **summary},
            )
        run.models["pruned"] = (pruned, tokenizer)
        return StepOutcome([directory], summary)

    options = {k: v for k, v in (("blocks", blocks), ("budget", budget)) if v is not None}
    return execute(run, "apply", key, options, body)
