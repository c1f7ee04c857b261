"""``search``: decide what to remove; the plan is plain JSON that ``apply`` reads."""

from __future__ import annotations

import time

from prunectl.context import RunContext
from prunectl.io import write_json, write_text
from prunectl.methods.inputs import Journal
from prunectl.methods.registry import create_method
from prunectl.steps import artifacts
from prunectl.steps.base import (
    StepOutcome,
    StepResult,
    execute,
    recipe_sections,
    sections_digest,
    upstream,
)
from prunectl.steps.inputs import method_inputs


def key(run: RunContext) -> tuple[dict, list]:
    sections = recipe_sections(run, "model", "calibration", "method", "target")
    sections["score_step"] = upstream(run, "score")
    return sections, []


def _progress_key(run: RunContext) -> str:
    """What the recorded decisions were made with: the search key less ``target``."""
    sections, _ = key(run)
    sections.pop("target")
    return sections_digest(sections)


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


def search(run: RunContext) -> StepResult:
    method = create_method(run.recipe.method)
    if run.recipe.target.blocks == 0:
        run.ui.warn("target.blocks is 0: nothing will be removed (the pruned model is the "
                    "dense one)")

    def body() -> StepOutcome:
        progress_key = _progress_key(run)
        if run.dist.is_main:
            _retire_foreign_progress(run, progress_key)
        run.dist.barrier()
        artifacts.check_memory(run, "search")
        model, _ = artifacts.dense_model(run)
        # the search owns search/progress.jsonl; a method appends its decisions there
        journal = Journal(artifacts.path(run, artifacts.PROGRESS).parent, progress_key)
        plan = method.search(method_inputs(run, method, model, "search", journal=journal),
                             artifacts.scores(run))
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

    return execute(run, "search", key, {}, body)
