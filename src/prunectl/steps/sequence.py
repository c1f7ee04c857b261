"""``run`` and ``status``: the steps in order, and what state each one is in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from prunectl import __version__
from prunectl.digest import digest
from prunectl.errors import UserError
from prunectl.project.state import STEPS

if TYPE_CHECKING:  # ``status`` of a project whose flags are remembered imports no torch
    from prunectl.context import RunContext
    from prunectl.project.state import Project
    from prunectl.steps.base import StepResult

#: the stale flags the last command that changed the project computed, keyed by what they
#: depend on (``status`` then reads them instead of importing every step: a shell loop that
#: polls it pays a fraction of a second, not torch's import)
STATUS_FILE = ".status.json"


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


def run_steps(run: RunContext) -> list[StepResult]:
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
    from prunectl.project.state import Project

    project = Project(project_dir)
    if project.pinned_recipe() is None:
        raise UserError(f"{project_dir} is not a prunectl project yet (no recipe pinned)")
    stale = None if verify else _remembered(project)
    if stale is None:
        stale = stale_flags(project)
    damage = project.damage(full=verify)
    rows = []
    for name in STEPS:
        record = project.record(name) or {}
        row = {"step": name, "status": record.get("status", "pending"), **record}
        if name in damage:
            row["damaged"] = damage[name]
        if name in stale:
            row["stale"] = stale[name]
        rows.append(row)
    return rows


def stale_flags(project: Project) -> dict[str, bool]:
    """For each finished step, whether what it read changed since (its fingerprint now)."""
    import torch

    from prunectl.context import RunContext
    from prunectl.recipe.load import load_recipe

    recipe, _ = load_recipe(None, [], pinned=project.pinned_recipe())
    run = RunContext(project, recipe, torch.device("cpu"), torch.float32)
    functions = _step_functions()
    flags = {}
    for name in STEPS:
        record = project.record(name) or {}
        if record.get("status") == "done":
            try:
                options = (record.get("summary") or {}).get("options", {})
                current = project.fingerprint(name, *functions[name][1](run, **options))
                flags[name] = current != record["fingerprint"]
            except UserError:
                flags[name] = True  # an input it read is gone or damaged
    return flags


def remember_status(project: Project) -> None:
    """Save the stale flags for ``status`` (called by a command that ran, holding the lock)."""
    from prunectl.io import write_json

    write_json(project.path(STATUS_FILE), {"key": _status_key(project),
                                           "stale": stale_flags(project)})


def _status_key(project: Project) -> str:
    """What the stale flags depend on: the state, the pinned recipe, the version, and the size
    and time of every file the steps recorded (a file changed since is read again)."""
    files = (project.state_file, project.path("recipe.yaml"))
    stats = {}
    for record in project.state["steps"].values():
        for name in sorted(record.get("files") or {}):
            found = project.path(name)
            stat = found.stat() if found.is_file() else None
            stats[name] = stat and (stat.st_size, stat.st_mtime_ns)
    return digest(__version__, *(f if f.is_file() else "-" for f in files), stats)


def _remembered(project: Project) -> dict[str, bool] | None:
    file = project.path(STATUS_FILE)
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != _status_key(project):
        return None
    return saved.get("stale")
