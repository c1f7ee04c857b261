"""``prunectl search`` (runs calibrate and score first when they are not up to date)."""

from __future__ import annotations

from typing import Annotated

import typer

from prunectl.cli.output import emit
from prunectl.cli.session import (BlocksOpt, Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt,
                                  MethodOpt, ProjectOpt, QuietOpt, RatioOpt, RecipeOpt, SetOpt,
                                  handles_errors, session)


@handles_errors
def search(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
           device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
           blocks: BlocksOpt = None, ratio: RatioOpt = None,
           sweep: Annotated[str | None, typer.Option(
               "--sweep", help="Budgets of parameters kept, e.g. 0.9,0.8,0.7: one plan each in "
               "search/plans/ and search/pareto.png (method: puzzle).")] = None,
           force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Decide what to remove and write the plan (runs calibrate and score first if needed).

    Example: prunectl search -p runs/exp1 --method block --blocks 12
    """
    from prunectl.methods.registry import create_method
    from prunectl.steps.calibrate import calibrate as calibrate_step
    from prunectl.steps.score import score as score_step
    from prunectl.steps.search import check_sweep, parse_sweep
    from prunectl.steps.search import search as step

    budgets = None if sweep is None else parse_sweep(sweep)
    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    opts.with_step_flags(method, blocks, ratio)
    with session(opts) as run:
        if budgets is not None:  # refused before calibrate and score run
            check_sweep(create_method(run.recipe.method), budgets)
        run.force = False  # --force re-runs the search itself, not its inputs
        results = [calibrate_step(run), score_step(run)]
        run.force = opts.force
        results.append(step(run, budgets))
        emit(opts, results)
