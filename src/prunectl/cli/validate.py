"""``prunectl validate``: check a recipe against the model's config without a project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.session import SetOpt, handles_errors


@handles_errors
def validate(recipe: Annotated[Path, typer.Option("-r", "--recipe", help="Recipe YAML.",
                                                  dir_okay=False)],
             set: SetOpt = None,
             config: Annotated[Path | None, typer.Option(
                 "--config", help="The model's config.json (file or folder) to check against "
                 "instead of its own: a 70B recipe on a laptop, offline.")] = None):
    """Check a recipe and the model's config (no weights, nothing computed, no project).

    A hub model's config comes from the cache or the hub; offline, give --config or
    model.config. Example: prunectl validate -r my-flap.yaml --set target.params_ratio=0.3
    """
    from prunectl.recipe import preflight
    from prunectl.recipe.load import load_recipe

    sets = list(set or [])
    # the config first (cache, --config, or an unreachable hub refused at once): a method's own
    # options are read after it, since reading them imports torch
    stand_in = preflight.stand_in_config(load_recipe(recipe, sets, light=True)[0], config)
    loaded, _ = load_recipe(recipe, sets)
    typer.echo(preflight.describe(loaded, preflight.check(loaded, stand_in)))
