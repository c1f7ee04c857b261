"""``run`` and ``status``: the steps in order, and what state each one is in."""

from __future__ import annotations

from pathlib import Path

from prunectl.context import RunContext
from prunectl.errors import UserError
from prunectl.steps import STEPS
from prunectl.steps.base import StepResult


def _step_functions() -> dict:
    from prunectl.steps import apply, calibrate, evaluate, export, recover, score, search

    return {
        "calibrate": (calibrate.calibrate, calibrate.key),
        "score": (score.score, score.key),
        "search": (search.search, search.key),
        "apply": (apply.apply, apply.key),
        "recover": (recover.recover, recover.key),
        "eval": (evaluate.evaluate, evaluate.key),
        "export": (export.export, export.key),
    }


def run_pipeline(run: RunContext) -> list[StepResult]:
    """Every step in order; each one skips itself when its inputs are unchanged.  A recovery
    setup that cannot run (FSDP on CPU, DeepSpeed missing...) is refused before calibrating."""
    if run.recipe.recover is not None:
        from prunectl.recovery.parallel import check

        check(run.recipe.recover, run.device, run.dist.world_size)
    functions = _step_functions()
    return [functions[name][0](run) for name in STEPS]


def status_rows(project_dir: Path, verify: bool = False) -> list[dict]:
    """One row per step: its record, plus ``stale`` when its inputs changed since it ran and
    ``damaged`` (``file (problem)``) for outputs missing or not as written (``verify``: every
    file hashed; otherwise those small, or whose size or modification time moved)."""
    import torch

    from prunectl.project import Project
    from prunectl.recipe import load_recipe

    project = Project(project_dir)
    pinned = project.pinned_recipe()
    if pinned is None:
        raise UserError(f"{project_dir} is not a prunectl project yet (no recipe pinned)")
    recipe, _ = load_recipe(None, [], pinned=pinned)
    run = RunContext(project, recipe, torch.device("cpu"), torch.float32)
    functions = _step_functions()
    damage = project.damage(full=verify)
    rows = []
    for name in STEPS:
        record = project.record(name) or {}
        row = {"step": name, "status": record.get("status", "pending"), **record}
        if name in damage:
            row["damaged"] = damage[name]
        if record.get("status") == "done":
            try:
                options = (record.get("summary") or {}).get("options", {})
                current = project.fingerprint(name, *functions[name][1](run, **options))
                row["stale"] = current != record["fingerprint"]
            except UserError:
                row["stale"] = True  # an input it read is gone or damaged
        rows.append(row)
    return rows
