"""The one place a step turns its run context into a method's :class:`Inputs`."""

from __future__ import annotations

import torch

from prunectl.context import RunContext
from prunectl.digest import digest
from prunectl.methods.base import Method
from prunectl.methods.inputs import Inputs, Journal, Target
from prunectl.steps import artifacts


def method_inputs(run: RunContext, method: Method, model, directory: str | None,
                  tokens: torch.Tensor | None = None, journal: Journal | None = None) -> Inputs:
    """``method``'s inputs on ``model``: the target checked against the method, the calibration
    windows (the saved ones unless ``tokens`` is given; none for ``calibration: none``) on the
    run's device, ``<directory>/cache`` (the step's own directory) as scratch, and the method's
    ``calibration`` kind, so its hooks get the passes its pipeline builds."""
    if tokens is None:
        tokens = method.pipeline.tokens(lambda: artifacts.calibration_tokens(run))
    return Inputs(
        model=model,
        tokens=tokens.to(run.device),
        batch_size=run.recipe.calibration.batch_size,
        target=Target.of(run.recipe.target).check(method),
        ui=run.ui,
        journal=journal or Journal(),
        scratch=None if directory is None else run.project.path(directory, "cache"),
        calibration=method.calibration,
    )


def calibration_journal(run: RunContext) -> Journal:
    """``calibration/progress/``, keyed by what the calibration pass depends on: the model,
    the calibration text and the dtype."""
    key = digest({name: run.recipe.section_dict(name) for name in ("model", "calibration")}
                 | {"dtype": str(run.dtype)})
    return Journal(run.project.path("calibration", "progress"), key)
