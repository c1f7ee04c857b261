"""``prunectl recipes ls / cp``: the recipes shipped inside the package, for pip users."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.session import handles_errors

recipes_app = typer.Typer(help="The recipes shipped with prunectl: list them, copy one to edit.",
                          no_args_is_help=True)


@recipes_app.command("ls")
@handles_errors
def recipes_ls():
    """List the shipped recipes, one line each."""
    from prunectl import catalog

    for name, path in catalog.shipped().items():
        typer.echo(f"{name:32} {catalog.describe(path)}")


@recipes_app.command("cp")
@handles_errors
def recipes_cp(name: Annotated[str, typer.Argument(help="A name from `prunectl recipes ls`.")],
               dest: Annotated[Path, typer.Argument(help="File, or directory to copy into.")]):
    """Copy a shipped recipe to edit.

    Example: prunectl recipes cp llama2-7b-flap my-flap.yaml
    """
    from prunectl import catalog

    typer.echo(str(catalog.copy(name, dest)))
