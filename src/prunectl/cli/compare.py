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
            json: JsonOpt = False):
    """One table across several projects: which recipe won.

    Example: prunectl compare runs/mix12 runs/flap20 runs/taylor20
    """
    from prunectl.evaluation.compare import compare_projects, compare_table

    missing = [str(p) for p in projects if not (p / "state.json").exists()]
    if missing:
        raise UserError(f"not prunectl projects (no state.json): {', '.join(missing)}")
    rows = compare_projects(projects)
    if json:
        typer.echo(jsonlib.dumps(rows, default=str))
    else:
        UI().out.print(compare_table(rows))
