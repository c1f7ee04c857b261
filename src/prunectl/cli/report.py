"""``prunectl report``: eval/report.md with plots (no session: reads the project only)."""

from __future__ import annotations

import typer

from prunectl.cli.session import ProjectOpt, handles_errors
from prunectl.errors import UserError


@handles_errors
def report(project: ProjectOpt):
    """Write eval/report.md with plots: perplexity vs blocks, per-layer structure, comparison.

    Example: prunectl report -p runs/exp1
    """
    from prunectl.evaluation.report import write_report
    from prunectl.project.state import Project

    if not (project / "state.json").exists():
        raise UserError(f"{project} is not a prunectl project (no state.json)")
    for step in ("apply", "eval"):  # the report reads what they wrote: as they wrote it
        Project(project).verify_outputs(step)
    typer.echo(str(write_report(project)))
