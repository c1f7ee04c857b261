"""Running one step: skip it when up to date, record what it did, never lose finished work.

A step is up to date when the fingerprint of exactly what it reads (its recipe sections, the
content digests of the earlier steps' files, the prunectl version) equals the one recorded in
``state.json`` after it last finished (the DVC rule).  The step body writes its own files
atomically; this module only decides whether to run it and records the outcome.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunectl.project import history
from prunectl.context import RunContext
from prunectl.errors import UserError, write_refused
from prunectl.io import restore, snapshot


@dataclass
class StepOutcome:
    """What a step body returns: the files it wrote and the figures worth showing."""

    outputs: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    step: str
    status: str  # "done" | "skipped" | "up-to-date"
    summary: dict[str, Any]
    seconds: float = 0.0


def execute(
    run: RunContext,
    step: str,
    key: Callable[..., tuple[dict[str, Any], list[Path]]],
    options: dict[str, Any],
    body: Callable[[], StepOutcome],
) -> StepResult:
    """Run ``body`` unless the step is up to date; record the result in ``state.json``.

    ``key(run, **options)`` gives the recipe sections and input files the result depends on;
    the options (step flags such as ``apply --blocks``) are recorded so ``status`` can tell
    later whether the step is stale.
    """
    project = run.project
    main = run.dist.is_main

    def decision() -> tuple[str, dict[str, Any] | None]:
        fingerprint = project.fingerprint(step, *key(run, **options))
        if not run.force and project.is_up_to_date(step, fingerprint):
            return fingerprint, (project.record(step) or {}).get("summary", {})
        return fingerprint, None

    # rank 0 decides, after its own records of the earlier steps: the others never read state.json
    fingerprint, kept_summary = run.dist.decide(decision)
    if kept_summary is not None:
        run.ui.info(f"[dim]{step}: up to date, skipped (use --force to re-run)[/]")
        return StepResult(step, "up-to-date", kept_summary)
    run.ui.info(f"[bold]{step}[/] …")
    before = snapshot([project.state_file])
    kept = history.set_aside(project, step) if main else None  # the finished result stays
    if main:
        project.start(step, fingerprint)
    started = time.perf_counter()
    try:
        outcome = body()
    except UserError:
        if main:
            restore(before)  # bad input: the step's last good record still stands
            history.discard_if_unchanged(project, kept)
        raise
    except BaseException as error:  # KeyboardInterrupt too: the record must say it stopped
        refused = write_refused(error)  # a full disk or a read-only folder: the user's to fix
        if refused is not None:
            if main:
                restore(before)
                history.discard_if_unchanged(project, kept)
            raise refused from None
        if not main:
            raise
        log = project.path("logs", f"{step}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        project.fail(step, f"{type(error).__name__}: {error} (traceback in {log})")
        error.add_note(f"traceback in {log}")  # the CLI's line points there
        raise
    seconds = time.perf_counter() - started
    summary = {**outcome.summary, "options": options} if options else outcome.summary
    run.dist.barrier()  # rank 0's files are complete before anyone reads them
    if main:
        project.finish(step, fingerprint, outcome.outputs, summary, seconds)
        history.announce(project, kept)
        if run.recipe.execution.keep_history is not None:
            history.remove(project.root, run.recipe.execution.keep_history, step)
    run.ui.info(f"[green]{step}: done[/] in {seconds:.1f}s")
    return StepResult(step, "done", outcome.summary, seconds)


def skip(run: RunContext, step: str, reason: str) -> StepResult:
    """Mark a step that does not apply to this recipe (e.g. ``recover`` without its section)."""
    if run.dist.is_main:
        run.project.mark_skipped(step, reason)
    run.ui.info(f"[dim]{step}: skipped ({reason})[/]")
    return StepResult(step, "skipped", {"reason": reason})


#: recipe keys that change where a step runs, not what it computes (``config`` is read by
#: ``validate`` alone)
RUNTIME_ONLY_KEYS = {"model": ("device", "device_map", "config")}


def recipe_sections(run: RunContext, *names: str) -> dict[str, Any]:
    """The recipe sections a step's result depends on, as plain data for its fingerprint."""
    chosen: dict[str, Any] = {}
    for name in names:
        section = run.recipe.section_dict(name)
        if isinstance(section, dict):
            section = {k: v for k, v in section.items() if k not in RUNTIME_ONLY_KEYS.get(name, ())}
        chosen[name] = section
    return chosen


def upstream(run: RunContext, step: str, under: tuple[str, ...] | None = None) -> str:
    """The content digest of what an earlier step wrote (its files under ``under``, or all),
    verified against its record first: a later step goes stale when that output is re-made
    with other bytes, and refuses it when it is damaged."""
    record = run.project.record(step)
    if not record or record.get("status") != "done":
        raise UserError(f"step '{step}' has not finished in {run.project.root}; run `prunectl {step}` first")
    return run.project.output_digest(step, "/".join(under) if under else None)
