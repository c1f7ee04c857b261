"""``recover``: LoRA fine-tuning of the pruned model, merged and saved in the project."""

from __future__ import annotations

from prunectl.context import RunContext
from prunectl.steps import artifacts
from prunectl.steps.base import (
    StepOutcome,
    StepResult,
    execute,
    recipe_sections,
    skip,
    upstream,
)


def key(run: RunContext) -> tuple[dict, list]:
    sections = recipe_sections(run, "recover")
    sections["pruned"] = upstream(run, "apply", artifacts.PRUNED)
    return sections, []


def recover(run: RunContext) -> StepResult:
    if run.recipe.recover is None:
        return skip(run, "recover", "the recipe has no `recover` section")
    source = run.dist.decide(lambda: artifacts.require(run, artifacts.PRUNED, "apply"))

    def body() -> StepOutcome:
        from prunectl.recovery.run import run_recovery

        # hours of training ahead: every file of the pruned model hashed, not only the small ones
        run.dist.decide(lambda: run.project.verify_outputs("apply", full=True))
        artifacts.check_memory(run, "recover")
        out_dir = run.project.path("recovered")
        artifacts.forget_dense(run)  # training needs the memory more than the cache
        summary = run_recovery(run, source, out_dir)
        run.models.pop("recovered", None)
        written = [artifacts.path(run, artifacts.RECOVERED_MODEL), out_dir / "summary.json",
                   out_dir / "adapter"]  # recorded, so that status and later steps verify them
        return StepOutcome([p for p in written if p.exists()], summary)

    return execute(run, "recover", key, {}, body)
