"""``prunectl validate``: check a recipe against the model's config without a project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.session import SetOpt, handles_errors


@handles_errors
def validate(recipe: Annotated[Path, typer.Option("-r", "--recipe", help="Recipe YAML.",
                                                  dir_okay=False)],
             set: SetOpt = None):
    """Check a recipe and the model's config (no weights, nothing computed, no project).

    Example: prunectl validate -r my-flap.yaml --set target.params_ratio=0.3
    """
    from prunectl import preflight
    from prunectl.recipe import load_recipe

    loaded, _ = load_recipe(recipe, list(set or []))
    typer.echo(preflight.describe(loaded, preflight.check(loaded)))
