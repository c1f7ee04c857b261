"""``prunectl recipes ls / show / cp``: the recipes shipped inside the package, for pip users."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.session import handles_errors

recipes_app = typer.Typer(help="The recipes shipped with prunectl: list them, print one, copy one "
                          "to edit.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="A name from `prunectl recipes ls`.")]


@recipes_app.command("ls")
@handles_errors
def recipes_ls():
    """List the shipped recipes and configs, one line each (stdout); where they are (stderr)."""
    from prunectl.recipe import catalog

    files = {**catalog.shipped(), **catalog.configs()}
    width = max(map(len, files))
    for name, path in files.items():
        typer.echo(f"{name:{width}}  {catalog.describe(path)}")
    typer.echo(f"in {catalog.directory()}; `prunectl recipes show NAME` prints one, "
               "`prunectl recipes cp NAME DEST` copies it", err=True)


@recipes_app.command("show")
@handles_errors
def recipes_show(name: NameArg):
    """Print a shipped recipe as `recipes cp` writes it (its extends: chain merged in).

    Example: prunectl recipes show llama2-7b-shortgpt
    """
    from prunectl.recipe import catalog

    shown = catalog.text(name)
    typer.echo(shown, nl=not shown.endswith("\n"))


@recipes_app.command("cp")
@handles_errors
def recipes_cp(name: NameArg,
               dest: Annotated[Path, typer.Argument(help="File, or directory to copy into.")]):
    """Copy a shipped recipe to edit; one that extends another is written self-contained.

    Example: prunectl recipes cp llama2-7b-flap my-flap.yaml
    """
    from prunectl.recipe import catalog

    typer.echo(str(catalog.copy(name, dest)))
