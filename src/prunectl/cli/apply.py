"""``prunectl apply``."""

from __future__ import annotations

from typing import Annotated

import typer

from prunectl.cli.output import emit
from prunectl.cli.session import (Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ProjectOpt,
                                  QuietOpt, RecipeOpt, SetOpt, handles_errors, session)


@handles_errors
def apply(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
          device: DeviceOpt = None, dtype: DtypeOpt = None,
          blocks: Annotated[int | None, typer.Option(
              "--blocks", help="Apply only the first K removals of the searched order.")] = None,
          budget: Annotated[float | None, typer.Option(
              "--budget", help="Apply search/plans/<budget>.json of `search --sweep`.")] = None,
          force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Remove the planned blocks, heads or channels physically and save the pruned model.

    Example: prunectl apply -p runs/exp1 --blocks 8
    """
    from prunectl.steps.apply import apply as step

    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    with session(opts) as run:
        emit(opts, [step(run, blocks, budget)])
