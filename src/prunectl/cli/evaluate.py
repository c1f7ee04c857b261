"""``prunectl eval``."""

from __future__ import annotations

from typing import Annotated

import typer

from prunectl.cli.output import emit
from prunectl.cli.session import (Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ProjectOpt,
                                  QuietOpt, RecipeOpt, SetOpt, handles_errors, session)


@handles_errors
def evaluate(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
             device: DeviceOpt = None, dtype: DtypeOpt = None,
             tasks: Annotated[str | None, typer.Option(
                 "--tasks", help="Comma-separated lm-eval tasks (overrides eval.tasks).")] = None,
             speed: Annotated[bool | None, typer.Option(
                 "--speed/--no-speed", help="Measure throughput and memory.")] = None,
             force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Perplexity, zero-shot tasks and speed of the dense, pruned and recovered models.

    Example: prunectl eval -p runs/exp1 --tasks piqa,hellaswag --speed
    """
    from prunectl.steps.evaluate import evaluate as step

    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    with session(opts) as run:
        emit(opts, [step(run, task_list, speed)])
