"""``prunectl recover``."""

from __future__ import annotations

from typing import Annotated

import typer

from prunectl.cli.output import emit
from prunectl.cli.session import (Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ProjectOpt,
                                  QuietOpt, RecipeOpt, SetOpt, handles_errors, session)


@handles_errors
def recover(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None,
            max_steps: Annotated[int | None, typer.Option(
                "--max-steps", help="Cap the optimizer steps (recover.max_steps).")] = None,
            force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Fine-tune the pruned model with LoRA, merge it, save it (resumes from checkpoints).

    Example: prunectl recover -p runs/exp1 --max-steps 200
    """
    from prunectl.steps.recover import recover as step

    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    if max_steps is not None:
        opts.sets.append(f"recover.max_steps={max_steps}")
    with session(opts) as run:
        emit(opts, [step(run)])
