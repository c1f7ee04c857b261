"""``prunectl status``: each step's state (no session: reads the project without locking it)."""

from __future__ import annotations

import json as jsonlib

from typing import Annotated

import typer

from prunectl.cli.output import fmt
from prunectl.cli.session import JsonOpt, ProjectOpt, handles_errors
from prunectl.errors import UserError
from prunectl.ui import UI


@handles_errors
def status(
    project: ProjectOpt,
    json: JsonOpt = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Hash every output file against its recorded digest; exit 2 when one "
                         "is damaged or missing.")] = False,
):
    """Show each step's state, timing, key figures, whether an input changed since (stale) and
    whether an output is missing or damaged.

    Example: prunectl status -p runs/exp1 --verify
    """
    from prunectl.project.history import entries
    from prunectl.steps.sequence import status_rows

    rows = status_rows(project, verify=verify)
    kept = entries(project)
    damaged = [f"{file} ({row['step']})" for row in rows for file in row.get("damaged", [])]
    if json:
        history = [{**e, "step": "history", "status": "kept", "of": e["step"]} for e in kept]
        typer.echo(jsonlib.dumps(rows + history, default=str))
    else:
        _tables(project, rows, kept)
    if verify and damaged:
        raise UserError(f"{len(damaged)} damaged or missing output(s): {'; '.join(damaged)}; "
                        "re-run each step named with --force, or delete its file")


def _tables(project, rows: list[dict], kept: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"prunectl status: {project}", title_justify="left")
    for column in ("step", "state", "finished", "time", "figures"):
        table.add_column(column)
    for row in rows:
        state = row["status"]
        if row.get("damaged"):
            state = "[red]damaged[/]: " + ", ".join(row["damaged"])
        elif row.get("stale"):
            state = "[yellow]stale[/]"  # done, but not for what it reads now
        figures = ", ".join(f"{k}={fmt(v)}" for k, v in (row.get("summary") or {}).items())
        seconds = row.get("duration_s")
        table.add_row(row["step"], state, row.get("finished") or "",
                      f"{seconds:.1f}s" if seconds else "", figures)
    UI().out.print(table)
    if kept:
        earlier = Table(title="kept earlier results (`prunectl gc` removes them)", title_justify="left")
        for column in ("entry", "finished", "size", "figures"):
            earlier.add_column(column)
        for entry in kept:
            figures = ", ".join(f"{k}={fmt(v)}" for k, v in entry["summary"].items() if k != "options")
            earlier.add_row(entry["entry"], entry["finished"] or "",
                            f"{entry['size_bytes'] / 1e6:.1f} MB", figures)
        UI().out.print(earlier)
