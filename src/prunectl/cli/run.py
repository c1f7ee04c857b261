"""``prunectl run``: every step in order."""

from __future__ import annotations

from prunectl.cli.output import emit
from prunectl.cli.session import (BlocksOpt, Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt,
                                  MethodOpt, ProjectOpt, QuietOpt, RatioOpt, RecipeOpt, SetOpt,
                                  handles_errors, session)


@handles_errors
def run_all(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
            blocks: BlocksOpt = None, ratio: RatioOpt = None, force: ForceOpt = False,
            json: JsonOpt = False, quiet: QuietOpt = False):
    """Run every step in order, skipping those already up to date.

    Example: prunectl run -p runs/exp1 -r recipes/smollm2-demo.yaml
    """
    from prunectl.steps.sequence import run_steps

    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    opts.with_step_flags(method, blocks, ratio)
    with session(opts) as run:
        emit(opts, run_steps(run))
