"""The ``prunectl`` command: one small module per command, no algorithm code.

``session.py`` holds what the step commands share (options, project lock, recipe pinning and
rollback, preflight, signals, error → exit code); ``output.py`` prints results.  Results go to
stdout (a table, or one JSON object with ``--json``); progress and hints go to stderr.  Exit
codes: 0 done, 1 internal failure (traceback in the step's log) or a lost rank under torchrun,
2 bad input, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperGroup

from prunectl import __version__
from prunectl.cli import (apply, calibrate, compare, evaluate, export, gc, recipes, recover,
                          report, run, score, search, status, validate)
from prunectl.cli.session import Terminated, _sigterm_raises, handles_errors

__all__ = ["Terminated", "_sigterm_raises", "app", "handles_errors", "main"]

@contextmanager
def _one_line() -> Iterator[None]:
    """A usage error (a value an option cannot take, an unknown option, a directory where a
    file is due) as every other prunectl error: one line on stderr, exit 2, not Typer's box."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `prunectl` alone prints the help
    except UsageError as error:
        command = error.ctx.command_path if error.ctx else "prunectl"
        message = " ".join(error.format_message().split()).rstrip(".")
        owners = _taking(error.option_name, error.ctx) if isinstance(error, NoSuchOption) else []
        if owners:
            message += f" (an option of {', '.join(owners)})"
        typer.echo(f"error: {command}: {message}; `{command} --help` lists the options", err=True)
        raise typer.Exit(2) from None


def _taking(option: str, ctx) -> list[str]:
    """The commands that take ``option``: another step's flag given to this one."""
    commands = getattr(ctx.find_root().command, "commands", {}) if ctx else {}
    return [name for name, command in commands.items()
            if any(option in param.opts for param in command.params)]


class OneLineErrors(TyperGroup):
    """The root command: its own options and every subcommand's parse errors go through
    :func:`_one_line` (a subcommand's context is made inside the root's ``invoke``)."""

    def make_context(self, *args, **kwargs):
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


app = typer.Typer(
    cls=OneLineErrors,
    name="prunectl",
    help="Structured pruning of large language models: calibrate, score, search, apply, "
    "recover, eval, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# registration order is the order `prunectl --help` lists them in
app.command()(calibrate.calibrate)
app.command()(score.score)
app.command()(search.search)
app.command()(apply.apply)
app.command()(recover.recover)
app.command("eval")(evaluate.evaluate)
app.command()(export.export)
app.command("run")(run.run_all)
app.command()(report.report)
app.command()(compare.compare)
app.command()(status.status)
app.command()(gc.gc)
app.add_typer(recipes.recipes_app, name="recipes")
app.command()(validate.validate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prunectl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version,
                                                is_eager=True, help="Show the version.")] = False):
    """Structured pruning of LLMs: BlockPruner, FLAP, LLM-Pruner and magnitude width pruning."""


def main() -> None:
    app()
