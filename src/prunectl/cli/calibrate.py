"""``prunectl calibrate``."""

from __future__ import annotations

from prunectl.cli.output import emit
from prunectl.cli.session import (Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, MethodOpt,
                                  ProjectOpt, QuietOpt, RecipeOpt, SetOpt, handles_errors, session)


@handles_errors
def calibrate(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
              device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
              force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Tokenize calibration text and collect activation statistics.

    Example: prunectl calibrate -p runs/exp1 -r recipes/smollm2-demo.yaml
    """
    from prunectl.steps.calibrate import calibrate as step

    opts = Common(project, recipe, set, device, dtype, force, json, quiet).with_step_flags(method)
    with session(opts) as run:
        emit(opts, [step(run)])
