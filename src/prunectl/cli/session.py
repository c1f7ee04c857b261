"""What every step command shares: the options, the session (lock the project, resolve, check
and pin the recipe, put the old pin back if the command then fails on bad input, pick device
and dtype), and the mapping of errors and signals to one line and an exit code.

Exit codes: 0 done, 1 internal failure (traceback in the step's log) or a lost rank under
torchrun, 2 bad input, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from prunectl.errors import UserError, write_refused
from prunectl.io import restore, snapshot
from prunectl.ui import UI, silence_libraries

# --- options shared by every step -----------------------------------------------------------
ProjectOpt = Annotated[
    Path,
    typer.Option("-p", "--project", envvar="PRUNECTL_PROJECT", help="Project directory.",
                 file_okay=False),
]
RecipeOpt = Annotated[
    Path | None,
    typer.Option("-r", "--recipe", help="Recipe YAML; pinned into the project at first use.",
                 dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key: key.path=value, or ~key.path to delete."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="Model dtype: auto, bfloat16, float16, float32.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run even when up to date.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON result object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or hints.")]
MethodOpt = Annotated[
    str | None, typer.Option("--method", "-m", help="Pruning method (replaces method section).")
]
BlocksOpt = Annotated[int | None, typer.Option("--blocks", help="Number of blocks to remove.")]
RatioOpt = Annotated[
    float | None,
    typer.Option("--ratio", help="Fraction of parameters to remove (0-1), of target.ratio_of."),
]


class Common:
    """The options every step takes, gathered so commands stay one line each."""

    def __init__(self, project, recipe, sets, device, dtype, force, json_output, quiet):
        self.project = project
        self.recipe = recipe
        self.sets = list(sets or [])
        self.device = device
        self.dtype = dtype
        self.force = force
        self.json_output = json_output
        self.quiet = quiet

    def with_step_flags(self, method: str | None = None, blocks=None, ratio=None) -> Common:
        """Step flags are recipe overrides: ``--method block --blocks 12`` and the like."""
        if method is not None:
            self.sets.append(f"method={{name: {method}}}")
        if blocks is not None and ratio is not None:
            raise UserError("--blocks and --ratio are alternatives; give one of them")
        if blocks is not None:
            self.sets += ["~target", f"target.blocks={blocks}"]
        if ratio is not None:
            # keeps target.ratio_of: --ratio is a fraction of what the recipe says
            self.sets += ["~target.blocks", "~target.params", f"target.params_ratio={ratio}"]
        return self


@contextmanager
def session(opts: Common, pin: bool = True) -> Iterator[Any]:
    """Lock the project, resolve and pin the recipe, pick device and dtype: the run context.
    ``pin=False`` (a one-off export) uses the recipe with its overrides without pinning it."""
    from prunectl import distributed
    from prunectl.context import RunContext
    from prunectl.project.state import Project
    from prunectl.recipe.load import load_recipe

    dist = distributed.current()
    quiet = opts.quiet or not dist.is_main  # one voice under torchrun
    ui = UI(quiet=quiet, json_output=opts.json_output, warnings=dist.is_main)
    silence_libraries(quiet)
    project = Project(opts.project)
    with ExitStack() as held:
        pinned: dict[str, Any] = {}

        def lock_and_pin() -> dict[str, Any]:
            note = held.enter_context(project.lock())
            if note:
                ui.warn(note)
            pinned["recipe"], pinned["rollback"] = _pin(project, opts, ui, pin)
            return pinned["recipe"].to_dict()

        resolved = dist.decide(lock_and_pin)  # rank 0 alone locks and pins; all get its recipe
        if dist.is_main:
            recipe, rollback = pinned["recipe"], pinned["rollback"]
        else:
            recipe, _ = load_recipe(None, [], pinned=resolved)
            rollback = {}
        device, dtype = _device_and_dtype(opts, recipe)
        try:
            yield RunContext(project, recipe, device, dtype, ui=ui, force=opts.force, dist=dist)
        except UserError:
            state = project.state_file
            if rollback and snapshot([state]) == {state: rollback[state]}:
                restore(rollback)  # nothing ran with the new recipe: keep the old one pinned
            raise
        if dist.is_main:  # while every step module is loaded: `status` then needs none
            from prunectl.steps.sequence import remember_status

            remember_status(project)


def _pin(project, opts: Common, ui: UI, pin: bool = True):
    """Resolve the recipe (file or pinned copy, plus overrides), check it, pin it; returns it
    with the bookkeeping files as they were, to put back if the command then fails."""
    from prunectl.recipe.load import load_recipe

    pinned = project.pinned_recipe()
    if opts.recipe is None and pinned is None:
        raise UserError(f"{opts.project} has no recipe yet; pass one with -r/--recipe "
                        "(`prunectl recipes ls` lists the shipped ones)")
    sets = opts.sets + ([f"model.dtype={opts.dtype}"] if opts.dtype else [])
    recipe, resolved = load_recipe(opts.recipe, sets, pinned=pinned)
    if opts.recipe is not None:
        from prunectl.project.history import check_recipe_change

        check_recipe_change(project, pinned, resolved, opts.force)
    if resolved != pinned:
        _preflight(recipe)
    _device_and_dtype(opts, recipe)  # a device this machine lacks is refused before pinning
    if not pin:
        return recipe, {}
    before = snapshot([project.path("recipe.yaml"), project.path("recipe.previous.yaml"),
                       project.state_file])
    changed = project.pin_recipe(resolved)
    if changed and pinned is not None:
        ui.info(f"recipe changed ({', '.join(changed)}); steps that read it will re-run")
    return recipe, before


def _device_and_dtype(opts: Common, recipe):
    from prunectl.modeling.loading import resolve_device, resolve_dtype

    device = resolve_device(opts.device or recipe.model.device)
    return device, resolve_dtype(recipe.model.dtype, device)


def _preflight(recipe) -> None:
    """Check a new recipe against the model's config before pinning it or computing anything:
    a missing model, an unsupported architecture, a block past the last layer, a calibration
    window longer than the model's positions or a target the method cannot meet fail here."""
    from prunectl.recipe import preflight

    preflight.check(recipe)


class Terminated(BaseException):
    """SIGTERM raised where the process is, so the lock is released and the step's record says
    it stopped (torchrun sends it to every rank once one has failed).  A ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` swallows it."""


@contextmanager
def _sigterm_raises() -> Iterator[Callable[[], None]]:
    """While a command runs and its outcome is reported, SIGTERM raises ``Terminated`` where
    the process is; a second SIGTERM ends the process at once.  One that arrives while a failure
    is already being handled (a lost torchrun rank: the collective's error and the launcher's
    SIGTERM come together) lets that handling finish and report; if the failure was swallowed
    instead, the check yielded here raises it once the command returns.  A handler someone
    else installed is left alone."""
    deferred: list[int] = []

    def raise_deferred() -> None:
        if deferred:
            raise Terminated("SIGTERM")

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL or \
            threading.current_thread() is not threading.main_thread():
        yield raise_deferred
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sys.exc_info()[1] is not None:
            deferred.append(signum)
            return
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield raise_deferred
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _parse_first(options: dict[str, Any]) -> None:
    """Refuse a recipe that cannot be parsed or validated (YAML syntax, unknown keys, bad
    values, missing paths) before the command imports torch, which takes seconds to a minute
    on a busy machine; a method's own options are checked by the full load after."""
    recipe = options.get("recipe")
    # the target flags as the command turns them into overrides (apply's --blocks is a prefix)
    flags = {} if "budget" in options else {k: options.get(k) for k in ("method", "blocks", "ratio")}
    sets = Common(None, recipe, options.get("set"), None, None, False, False, False).with_step_flags(
        **flags).sets
    if recipe is None and not sets:
        return
    from prunectl.recipe.load import load_recipe

    pinned = None
    if recipe is None:
        if options.get("project") is None:
            return
        from prunectl.project.state import Project

        pinned = Project(options["project"]).pinned_recipe()
        if pinned is None:
            return  # the session says the project has no recipe yet
    load_recipe(recipe, sets, pinned=pinned, light=True)


def handles_errors(command: Callable) -> Callable:
    """Turn user errors into one line and exit 2, internal ones into exit 1 with a log pointer,
    a lost torchrun rank or a signal into one line saying that a re-run resumes."""

    def reporting(*args, **kwargs):
        with _sigterm_raises() as raise_deferred_sigterm:
            try:
                _parse_first(kwargs)
                result = command(*args, **kwargs)
                raise_deferred_sigterm()
                return result
            except UserError as error:
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(2) from None
            except (typer.Exit, typer.Abort):
                raise
            except KeyboardInterrupt:
                typer.echo("interrupted; re-run the same command to resume", err=True)
                raise typer.Exit(130) from None
            except BrokenPipeError:  # the reader left (`prunectl recipes ls | head -1`)
                # the interpreter's last flush must not fail again on the closed pipe
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(128 + signal.SIGPIPE) from None
            except Terminated:
                launched = os.environ.get("WORLD_SIZE", "1") != "1"
                why = (f"rank {os.environ.get('RANK', '?')}: stopped by SIGTERM (the launcher "
                       "stops every rank once one has failed: see its output)") if launched else \
                    "stopped by SIGTERM"
                typer.echo(f"{why}; re-run the same command to resume", err=True)
                raise typer.Exit(143) from None
            except Exception as error:
                if os.environ.get("PRUNECTL_DEBUG"):
                    raise
                refused = write_refused(error)  # outside a step: the pin, an export folder
                if refused is not None:
                    typer.echo(f"error: {refused}", err=True)
                    raise typer.Exit(2) from None
                from prunectl.distributed import GroupError

                if isinstance(error, GroupError):
                    typer.echo(f"stopped: {error}; re-run the same command to resume", err=True)
                    raise typer.Exit(1) from None
                logs = [n for n in getattr(error, "__notes__", []) if n.startswith("traceback in")]
                typer.echo(
                    f"internal error: {type(error).__name__}: {error} "
                    f"({logs[0] + '; ' if logs else ''}PRUNECTL_DEBUG=1 to raise)",
                    err=True,
                )
                raise typer.Exit(1) from None

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            result = reporting(*args, **kwargs)
        except typer.Exit as stop:
            _end_group(stop.exit_code)
            raise
        except BaseException:
            _end_group(1)
            raise
        _end_group(0)
        return result

    return wrapper


def _end_group(code: int) -> None:
    """Tear the torchrun group down with the command's exit code (only if one was formed:
    commands that never touch torch do not import it for this)."""
    group = sys.modules.get("prunectl.distributed")
    if group is not None:
        group.end_group(code)

