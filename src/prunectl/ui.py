"""Terminal output: progress bars and hints on stderr, results on stdout.

``--quiet`` silences hints and bars (prunectl's and the libraries' underneath) but not
warnings nor errors; a warning prints once per command however often it is raised.  ``--json``
keeps stdout to one result object, so a shell pipeline can parse it while a person still sees
progress on stderr.
"""

from __future__ import annotations

import sys
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
