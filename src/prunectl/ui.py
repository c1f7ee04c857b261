"""Terminal output: progress bars and hints on stderr, results on stdout.

``--quiet`` silences hints and bars; ``--json`` keeps stdout to one result object, so a shell
pipeline can parse it while a person still sees progress on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


class UI:
    """Where a step reports what it is doing."""

    def __init__(self, quiet: bool = False, json_output: bool = False):
        self.quiet = quiet
        self.json_output = json_output
        self.err = Console(stderr=True, quiet=quiet)
        self.out = Console()

    def info(self, message: str) -> None:
        self.err.print(message, highlight=False)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {message}", highlight=False)

    def progress(
        self, iterable: Iterable[T], total: int | None = None, description: str = ""
    ) -> Iterator[T]:
        """Iterate with a rich progress bar on stderr (none when quiet)."""
        if self.quiet:
            yield from iterable
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            yield from bar.track(iterable, total=total, description=description)


SILENT = UI(quiet=True)
