"""``prunectl gc``: remove results kept in ``history/`` (nothing else is ever removed)."""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer

from prunectl.cli.session import JsonOpt, ProjectOpt, QuietOpt, handles_errors


@handles_errors
def gc(project: ProjectOpt,
       keep_last: Annotated[int | None, typer.Option(
           "--keep-last", help="Keep the newest N kept results of each step.")] = None,
       json: JsonOpt = False, quiet: QuietOpt = False):
    """Remove the earlier results a re-run kept in PROJECT/history/ (`status` lists them).

    Example: prunectl gc -p runs/exp1 --keep-last 1
    """
    from prunectl.project import history
    from prunectl.errors import UserError
    from prunectl.project.state import Project

    if not (project / "state.json").is_file():
        raise UserError(f"{project} is not a prunectl project (no state.json); check -p/--project")
    with Project(project).lock():
        removed = history.remove(project, keep_last)
    freed = sum(entry["size_bytes"] for entry in removed)
    if json:
        typer.echo(jsonlib.dumps({"removed": [e["entry"] for e in removed], "freed_bytes": freed}))
    elif not quiet:
        for entry in removed:
            typer.echo(f"removed {entry['entry']} ({entry['size_bytes'] / 1e6:.1f} MB)")
        typer.echo(f"{len(removed)} kept result(s) removed, {freed / 1e6:.1f} MB of files")
