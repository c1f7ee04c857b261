"""``score``: importance of every prunable unit, from the calibration files."""

from __future__ import annotations

from prunectl.context import RunContext
from prunectl.digest import digest
from prunectl.io import save_tensors, write_json
from prunectl.methods.inputs import Journal
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


def _summarise(scores: dict) -> dict:
    return {
        name: {"shape": list(t.shape), "min": float(t.min()), "max": float(t.max())}
        for name, t in scores.items()
        if t.numel()
    }


def key(run: RunContext) -> tuple[dict, list]:
    sections = recipe_sections(run, "model", "calibration", "method")
    ignored = create_method(run.recipe.method).search_only_keys
    sections["method"] = {k: v for k, v in sections["method"].items() if k not in ignored}
    sections["calibration_step"] = upstream(run, "calibrate")
    return sections, []


def score(run: RunContext) -> StepResult:
    method = create_method(run.recipe.method)

    def body() -> StepOutcome:
        artifacts.check_memory(run, "score")
        model, _ = artifacts.dense_model(run)
        # a method that scores for long (puzzle's library) keeps its progress here
        journal = Journal(run.project.path("scores", "progress"), digest(key(run)[0]))
        scores = method.score(method_inputs(run, method, model, "scores", journal=journal),
                              artifacts.statistics(run))
        summary_file = artifacts.path(run, ("scores", "summary.json"))
        if run.dist.is_main:
            save_tensors(artifacts.path(run, artifacts.SCORES), scores)
            write_json(summary_file, _summarise(scores))
        return StepOutcome(
            [artifacts.path(run, artifacts.SCORES), summary_file], {"score_tensors": len(scores)}
        )

    return execute(run, "score", key, {}, body)
