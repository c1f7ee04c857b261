"""``search``: decide what to remove; the plan is plain JSON that ``apply`` reads."""

from __future__ import annotations

import dataclasses
import time

from prunectl.context import RunContext
from prunectl.digest import digest
from prunectl.errors import UserError
from prunectl.io import write_json, write_text
from prunectl.methods.inputs import Inputs, Journal
from prunectl.methods.registry import create_method
from prunectl.steps import artifacts
from prunectl.steps.base import (
    StepOutcome,
    StepResult,
    execute,
    recipe_sections,
    upstream,
)
from prunectl.steps.inputs import method_inputs


def key(run: RunContext, sweep: list[float] | None = None) -> tuple[dict, list]:
    sections = recipe_sections(run, "model", "calibration", "method", "target")
    sections["score_step"] = upstream(run, "score")
    sections["calibration_step"] = upstream(run, "calibrate")  # the block search reads tokens
    if sweep is not None:
        sections["sweep"] = sweep
    return sections, []


def parse_sweep(text: str) -> list[float]:
    """``--sweep 0.9,0.8`` as numbers (checked by :func:`check_sweep`)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--sweep {text}: expected comma-separated shares of the parameters "
                        "kept, e.g. --sweep 0.9,0.8,0.7") from None


def check_sweep(method, sweep: list[float]) -> None:
    """A sweep needs a method that supports it and budgets strictly between 0 and 1."""
    if not method.supports_sweep:
        raise UserError(f"method {method.name} has no --sweep; use method: puzzle, or search "
                        "one target at a time (--ratio)")
    bad = [b for b in sweep if not 0 < b < 1]
    if bad or not sweep:
        raise UserError(f"--sweep {','.join(f'{b:g}' for b in sweep)}: expected shares of the "
                        "parameters kept strictly between 0 and 1, e.g. --sweep 0.9,0.8,0.7")


def _sweep(run: RunContext, method, inputs: Inputs, scores, sweep: list[float]) -> StepOutcome:
    """One plan per budget (parameters kept, of ``target.ratio_of``; the recipe's other budgets
    kept), then ``search/pareto.png`` and ``pareto.json``: calibration perplexity against
    parameters kept, for the plans and the method's references at the same budgets."""
    from prunectl.evaluation.plots import pareto

    directory = artifacts.path(run, artifacts.PLAN).parent
    series: dict[str, list[dict]] = {method.name: []}
    outputs = []
    for budget in sweep:
        target = dataclasses.replace(inputs.target, params_ratio=round(1 - budget, 12),
                                     params=None)
        at = dataclasses.replace(inputs, target=target)
        run.ui.info(f"budget {budget:g}: {target.params_ratio:g} of {target.ratio_of} removed")
        plans = {method.name: method.search(at, scores), **method.references(at, scores)}
        for label, plan in plans.items():
            series.setdefault(label, []).append(
                {"budget": budget, "params": plan.achieved.get("params_kept"),
                 "perplexity": plan.achieved.get("calibration_ppl"),
                 "library_score": plan.achieved.get("library_score")})
        outputs.append(artifacts.path(run, artifacts.sweep_plan(budget)))
        if run.dist.is_main:
            write_json(outputs[-1], plans[method.name].model_dump(mode="json"))
    if run.dist.is_main:
        write_json(directory / "pareto.json", series)
        pareto(series, directory / "pareto.png",
               f"{method.name}: sweep of {inputs.target.ratio_of} parameters kept")
    outputs += [directory / "pareto.json", directory / "pareto.png"]
    return StepOutcome(outputs, {"plans": len(sweep), "pareto": str(directory / "pareto.png")})


def _progress_key(run: RunContext) -> str:
    """What the recorded decisions were made with: the search key less ``target``."""
    sections, _ = key(run)
    sections.pop("target")
    return digest(sections)


def _retire_foreign_progress(run: RunContext, progress_key: str) -> None:
    """Keep recorded decisions only for the inputs they were made with.

    The key leaves out ``target``: a nested removal order stays valid when the target grows, so
    a larger target resumes the search instead of restarting it.  A progress file made for other
    inputs is renamed aside, never deleted.
    """
    progress = artifacts.path(run, artifacts.PROGRESS)
    key_file = progress.with_name("progress.key")
    if progress.exists() and (not key_file.exists() or key_file.read_text().strip() != progress_key):
        aside = progress.with_name(f"progress.{int(time.time())}.stale.jsonl")
        progress.rename(aside)
        run.ui.warn(f"search inputs changed: earlier decisions kept in {aside}, searching afresh")
    write_text(key_file, progress_key + "\n")


def search(run: RunContext, sweep: list[float] | None = None) -> StepResult:
    """The plan (``search/plan.json``); with ``sweep`` (budgets of parameters kept) one plan per
    budget in ``search/plans/`` and the Pareto plot instead."""
    method = create_method(run.recipe.method)
    if sweep is not None:
        check_sweep(method, sweep)

    def body() -> StepOutcome:
        progress_key = _progress_key(run)
        if run.dist.is_main:
            _retire_foreign_progress(run, progress_key)
        run.dist.barrier()
        artifacts.check_memory(run, "search")
        model, _ = artifacts.dense_model(run)
        # the search owns search/progress.jsonl; a method appends its decisions there
        journal = Journal(artifacts.path(run, artifacts.PROGRESS).parent, progress_key)
        inputs = method_inputs(run, method, model, "search", journal=journal)
        if sweep is not None:
            return _sweep(run, method, inputs, artifacts.scores(run), sweep)
        plan = method.search(inputs, artifacts.scores(run))
        plan_file = artifacts.path(run, artifacts.PLAN)
        if run.dist.is_main:
            write_json(plan_file, plan.model_dump(mode="json"))
        outputs = [plan_file]
        if artifacts.path(run, artifacts.PROGRESS).exists():
            outputs.append(artifacts.path(run, artifacts.PROGRESS))
        summary = {"removed": len(plan.removal_order) or None, **plan.achieved}
        for note in plan.notes:
            run.ui.warn(note)
        return StepOutcome(outputs, {k: v for k, v in summary.items() if v is not None})

    return execute(run, "search", key, {"sweep": sweep} if sweep is not None else {}, body)
