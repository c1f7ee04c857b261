"""Terminal output: progress bars and hints on stderr, results on stdout.

``--quiet`` silences hints and bars (prunectl's and the libraries' underneath) but not
warnings nor errors; a warning prints once per command however often it is raised.  ``--json``
keeps stdout to one result object, so a shell pipeline can parse it while a person still sees
progress on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


class UI:
    """Where a step reports what it is doing."""

    def __init__(self, quiet: bool = False, json_output: bool = False, warnings: bool = True):
        self.quiet = quiet
        self.json_output = json_output
        self.err = Console(stderr=True, quiet=quiet)
        self.out = Console()
        #: ``--quiet`` keeps warnings; ``warnings=False`` is for the other ranks under torchrun
        self._warnings = Console(stderr=True, quiet=not warnings)
        self._warned: set[str] = set()

    def info(self, message: str) -> None:
        self.err.print(message, highlight=False)

    def warn(self, message: str) -> None:
        """Printed even with ``--quiet``, and once: a step that repeats itself says it once."""
        if message in self._warned:
            return
        self._warned.add(message)
        self._warnings.print(f"[yellow]warning:[/] {message}", highlight=False)

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

    @contextmanager
    def meter(self, description: str, total: float, done: float = 0.0,
              unit: str = "item") -> Iterator[Meter]:
        """A progress bar over ``total`` units of *work* (items may cost unequal amounts; work
        ``done`` by an earlier, interrupted run counts as done but not as measured), with an
        ETA, and :meth:`Meter.estimate` for the one line saying how long the rest will take."""
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.err, transient=True, disable=self.quiet) as bar:
            task = bar.add_task(description, total=total, completed=done)
            yield Meter(self, bar, task, description, total, done, unit)


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h``: an estimate's precision, not a stopwatch's."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Meter:
    """What :meth:`UI.meter` yields: ``advance`` by the work one item took."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, ui: UI, bar: Progress, task, description: str, total: float,
                 done: float, unit: str):
        self.ui, self.bar, self.task = ui, bar, task
        self.description, self.total, self.done, self.unit = description, total, done, unit
        self.measured, self.items, self.estimated = 0.0, 0, False
        self.start = self.clock()

    def advance(self, work: float = 1.0) -> None:
        self.done += work
        self.measured += work
        self.items += 1
        self.bar.advance(self.task, work)

    def estimate(self) -> None:
        """Print, once, the time the remaining work will take at the rate measured so far
        (nothing when nothing was measured yet or nothing is left)."""
        left = self.total - self.done
        if self.estimated or self.measured <= 0 or left <= 0:
            return
        self.estimated = True
        elapsed = self.clock() - self.start
        self.ui.info(f"{self.description}: about {duration(elapsed * left / self.measured)} "
                     f"to go, estimated from the first {self.items} {self.unit}"
                     f"{'s' if self.items != 1 else ''} "
                     f"({duration(elapsed)}, {self.measured / self.total:.0%} of the work)")


SILENT = UI(quiet=True, warnings=False)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def silence_libraries(quiet: bool) -> None:
    """Third-party output prunectl's own UI replaces: the progress bars of transformers,
    datasets and huggingface_hub (and transformers' GGUF de-quantization bar, a bare tqdm its
    switch does not reach) always when ``quiet`` or when stderr is no terminal (a pipe or a
    log file gets ``\\r`` bar frames otherwise); with ``quiet`` also the libraries' log lines
    below errors (the hub's "Retrying in 1s" lines among them) and Python warnings."""
    if not quiet and stderr_is_terminal():
        return
    import logging
    import warnings
    from functools import partial

    import datasets
    import huggingface_hub
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from tqdm.auto import tqdm

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    gguf_loading.tqdm = partial(tqdm, disable=True)
    if not quiet:
        return
    warnings.filterwarnings("ignore")  # FutureWarnings and the like: errors alone get through
    transformers.utils.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()
    for name in ("lm-eval", "lm_eval", "accelerate", "peft", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
