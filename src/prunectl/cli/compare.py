"""``prunectl compare``: one table across projects."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.session import JsonOpt, handles_errors
from prunectl.errors import UserError
from prunectl.ui import UI


@handles_errors
def compare(projects: Annotated[list[Path], typer.Argument(help="Project directories.")],
            json: JsonOpt = False,
            plot: Annotated[Path | None, typer.Option(
                "--plot", help="Also write a PNG: perplexity against parameters kept.",
                dir_okay=False)] = None):
    """One table across several projects: which recipe won.

    Projects are ranked by the perplexity of each one's best model (the lower of pruned and
    recovered, named in the table) on the data set most of them measured, read with the share
    of parameters kept; the winner's column is starred.

    Example: prunectl compare runs/mix12 runs/flap20 runs/taylor20 --plot compare.png
    """
    from prunectl.evaluation.compare import compare_plot, compare_projects, compare_table

    missing = [str(p) for p in projects if not (p / "state.json").exists()]
    if missing:
        raise UserError(f"not prunectl projects (no state.json): {', '.join(missing)}")
    rows = compare_projects(projects)
    if plot is not None:
        compare_plot(rows, plot)
    if json:
        typer.echo(jsonlib.dumps(rows, default=str))
    else:
        UI().out.print(compare_table(rows))
    if plot is not None:
        UI().info(f"plot: {plot}")
