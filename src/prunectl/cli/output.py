"""Step results on stdout: one JSON object with ``--json``, else a summary table."""

from __future__ import annotations

import json as jsonlib
from typing import Any

import typer

from prunectl.cli.session import Common
from prunectl.ui import UI


def emit(opts: Common, results: list) -> None:
    """Print the results: one JSON object with ``--json``, else a summary table (rank 0 only
    under torchrun: the ranks' results are the same)."""
    from prunectl.distributed import current

    if not current().is_main:
        return
    if opts.json_output:
        payload = [{"step": r.step, "status": r.status, "seconds": round(r.seconds, 3),
                    "summary": r.summary} for r in results]
        typer.echo(jsonlib.dumps(payload[0] if len(payload) == 1 else {"steps": payload}, default=str))
        return
    if opts.quiet:
        return
    from rich.table import Table

    table = Table(title="prunectl", title_justify="left")
    for column in ("step", "status", "time", "figures"):
        table.add_column(column)
    for r in results:
        figures = ", ".join(f"{k}={fmt(v)}" for k, v in r.summary.items())
        table.add_row(r.step, r.status, f"{r.seconds:.1f}s" if r.seconds else "", figures)
    UI().out.print(table)


def fmt(value: Any) -> str:
    """A figure for a table cell: floats to 4 significant digits, dicts flattened."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
