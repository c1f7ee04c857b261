"""The ``prunectl`` command: one thin function per step, no algorithm code.

Results go to stdout (a table, or one JSON object with ``--json``); progress and hints go to
stderr.  Exit codes: 0 done, 1 internal failure (traceback in the step's log) or a lost rank
under torchrun, 2 bad input, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import json as jsonlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from prunectl import __version__
from prunectl.errors import UserError
from prunectl.io import restore, snapshot
from prunectl.ui import UI

app = typer.Typer(
    name="prunectl",
    help="Structured pruning of large language models: calibrate, score, search, apply, "
    "recover, eval, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


def _common(project, recipe, sets, device, dtype, force, json_output, quiet) -> Common:
    return Common(project, recipe, sets, device, dtype, force, json_output, quiet)


@contextmanager
def session(opts: Common) -> Iterator[Any]:
    """Lock the project, resolve and pin the recipe, pick device and dtype: the run context."""
    from prunectl import distributed
    from prunectl.context import RunContext
    from prunectl.modeling.loading import resolve_device, resolve_dtype
    from prunectl.project import Project
    from prunectl.recipe import load_recipe

    dist = distributed.current()
    quiet = opts.quiet or not dist.is_main  # one voice under torchrun
    ui = UI(quiet=quiet, json_output=opts.json_output)
    if quiet:
        _silence_libraries()
    project = Project(opts.project)
    with ExitStack() as held:
        pinned: dict[str, Any] = {}

        def lock_and_pin() -> dict[str, Any]:
            note = held.enter_context(project.lock())
            if note:
                ui.warn(note)
            pinned["recipe"], pinned["rollback"] = _pin(project, opts, ui)
            return pinned["recipe"].to_dict()

        resolved = dist.decide(lock_and_pin)  # rank 0 alone locks and pins; all get its recipe
        if dist.is_main:
            recipe, rollback = pinned["recipe"], pinned["rollback"]
        else:
            recipe, _ = load_recipe(None, [], pinned=resolved)
            rollback = {}
        device = resolve_device(opts.device or recipe.model.device)
        dtype = resolve_dtype(recipe.model.dtype, device)
        try:
            yield RunContext(project, recipe, device, dtype, ui=ui, force=opts.force, dist=dist)
        except UserError:
            state = project.state_file
            if rollback and snapshot([state]) == {state: rollback[state]}:
                restore(rollback)  # nothing ran with the new recipe: keep the old one pinned
            raise


def _pin(project, opts: Common, ui: UI):
    """Resolve the recipe (file or pinned copy, plus overrides), check it, pin it; returns it
    with the bookkeeping files as they were, to put back if the command then fails."""
    from prunectl.recipe import load_recipe

    pinned = project.pinned_recipe()
    if opts.recipe is None and pinned is None:
        raise UserError(f"{opts.project} has no recipe yet; pass one with -r/--recipe "
                        "(`prunectl recipes ls` lists the shipped ones)")
    sets = opts.sets + ([f"model.dtype={opts.dtype}"] if opts.dtype else [])
    recipe, resolved = load_recipe(opts.recipe, sets, pinned=pinned)
    if resolved != pinned:
        _preflight(recipe)
    before = snapshot([project.path("recipe.yaml"), project.path("recipe.previous.yaml"),
                       project.state_file])
    changed = project.pin_recipe(resolved)
    if changed and pinned is not None:
        ui.warn(f"recipe changed ({', '.join(changed)}); steps that read it will re-run")
    return recipe, before


def _preflight(recipe) -> None:
    """Check a new recipe against the model's config before pinning it or computing anything:
    a missing model, an unsupported architecture, a block past the last layer, a calibration
    window longer than the model's positions or a target the method cannot meet fail here."""
    from prunectl import preflight

    preflight.check(recipe)


def _silence_libraries() -> None:
    """``--quiet`` means quiet: no progress bars or warnings from the libraries underneath
    (errors still print)."""
    import logging
    from functools import partial

    warnings.filterwarnings("ignore")  # FutureWarnings and the like: errors alone get through
    import datasets
    import huggingface_hub
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from tqdm.auto import tqdm

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()
    # the GGUF de-quantization bar is a bare tqdm that transformers' switch does not reach
    gguf_loading.tqdm = partial(tqdm, disable=True)
    for name in ("lm-eval", "lm_eval", "accelerate", "peft", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _emit(opts: Common, results: list) -> None:
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
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in r.summary.items())
        table.add_row(r.step, r.status, f"{r.seconds:.1f}s" if r.seconds else "", figures)
    UI().out.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


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


def handles_errors(command: Callable) -> Callable:
    """Turn user errors into one line and exit 2, internal ones into exit 1 with a log pointer,
    a lost torchrun rank or a signal into one line saying that a re-run resumes."""

    def reporting(*args, **kwargs):
        with _sigterm_raises() as raise_deferred_sigterm:
            try:
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


# --- steps ----------------------------------------------------------------------------------
@app.command()
@handles_errors
def calibrate(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
              device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
              force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Tokenize calibration text and collect activation statistics.

    Example: prunectl calibrate -p runs/exp1 -r recipes/smollm2-demo.yaml
    """
    from prunectl.steps.calibrate import calibrate as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet).with_step_flags(method)
    with session(opts) as run:
        _emit(opts, [step(run)])


@app.command()
@handles_errors
def score(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
          device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
          force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Score the importance of blocks, heads or channels.

    Example: prunectl score -p runs/exp1
    """
    from prunectl.steps.score import score as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet).with_step_flags(method)
    with session(opts) as run:
        _emit(opts, [step(run)])


@app.command()
@handles_errors
def search(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
           device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
           blocks: BlocksOpt = None, ratio: RatioOpt = None, force: ForceOpt = False,
           json: JsonOpt = False, quiet: QuietOpt = False):
    """Decide what to remove and write the plan (runs calibrate and score first if needed).

    Example: prunectl search -p runs/exp1 --method block --blocks 12
    """
    from prunectl.steps.calibrate import calibrate as calibrate_step
    from prunectl.steps.score import score as score_step
    from prunectl.steps.search import search as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    opts.with_step_flags(method, blocks, ratio)
    with session(opts) as run:
        run.force = False  # --force re-runs the search itself, not its inputs
        results = [calibrate_step(run), score_step(run)]
        run.force = opts.force
        results.append(step(run))
        _emit(opts, results)


@app.command()
@handles_errors
def apply(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
          device: DeviceOpt = None, dtype: DtypeOpt = None,
          blocks: Annotated[int | None, typer.Option(
              "--blocks", help="Apply only the first K removals of the searched order.")] = None,
          force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Remove the planned blocks, heads or channels physically and save the pruned model.

    Example: prunectl apply -p runs/exp1 --blocks 8
    """
    from prunectl.steps.apply import apply as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    with session(opts) as run:
        _emit(opts, [step(run, blocks)])


@app.command()
@handles_errors
def recover(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None,
            max_steps: Annotated[int | None, typer.Option(
                "--max-steps", help="Cap the optimizer steps (recover.max_steps).")] = None,
            force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Fine-tune the pruned model with LoRA, merge it, save it (resumes from checkpoints).

    Example: prunectl recover -p runs/exp1 --max-steps 200
    """
    from prunectl.steps.recover import recover as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    if max_steps is not None:
        opts.sets.append(f"recover.max_steps={max_steps}")
    with session(opts) as run:
        _emit(opts, [step(run)])


@app.command("eval")
@handles_errors
def evaluate(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
             device: DeviceOpt = None, dtype: DtypeOpt = None,
             tasks: Annotated[str | None, typer.Option(
                 "--tasks", help="Comma-separated lm-eval tasks (overrides eval.tasks).")] = None,
             speed: Annotated[bool | None, typer.Option(
                 "--speed/--no-speed", help="Measure throughput and memory.")] = None,
             force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Perplexity, zero-shot tasks and speed of the dense, pruned and recovered models.

    Example: prunectl eval -p runs/exp1 --tasks piqa,hellaswag --speed
    """
    from prunectl.steps.evaluate import evaluate as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    with session(opts) as run:
        _emit(opts, [step(run, task_list, speed)])


@app.command()
@handles_errors
def export(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
           device: DeviceOpt = None, dtype: DtypeOpt = None,
           output: Annotated[Path | None, typer.Option(
               "--output", "-o", help="Directory to write (default: PROJECT/export).",
               file_okay=False)] = None,
           format: Annotated[str | None, typer.Option(
               "--format", help="hf (Hugging Face directory) or gguf (llama.cpp file); "
               "overrides export.format.")] = None,
           outtype: Annotated[str | None, typer.Option(
               "--outtype", help="GGUF tensor type: f32, f16, bf16 or q8_0 (overrides export.outtype).")] = None,
           force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Write the shareable model directory with its model card.

    Example: prunectl export -p runs/exp1 -o models/llama2-pruned
    Example: prunectl export -p runs/exp1 --format gguf --outtype q8_0
    """
    from prunectl.steps.export import export as step

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    opts.sets += [f"export.{key}={value}" for key, value in (("format", format), ("outtype", outtype))
                  if value is not None]
    with session(opts) as run:
        _emit(opts, [step(run, output)])


@app.command("run")
@handles_errors
def run_all(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None, method: MethodOpt = None,
            blocks: BlocksOpt = None, ratio: RatioOpt = None, force: ForceOpt = False,
            json: JsonOpt = False, quiet: QuietOpt = False):
    """Run every step in order, skipping those already up to date.

    Example: prunectl run -p runs/exp1 -r recipes/smollm2-demo.yaml
    """
    from prunectl.steps.pipeline import run_pipeline

    opts = _common(project, recipe, set, device, dtype, force, json, quiet)
    opts.with_step_flags(method, blocks, ratio)
    with session(opts) as run:
        _emit(opts, run_pipeline(run))


@app.command()
@handles_errors
def report(project: ProjectOpt):
    """Write eval/report.md with plots: perplexity vs blocks, per-layer structure, comparison.

    Example: prunectl report -p runs/exp1
    """
    from prunectl.evaluation.report import write_report

    if not (project / "state.json").exists():
        raise UserError(f"{project} is not a prunectl project (no state.json)")
    typer.echo(str(write_report(project)))


@app.command()
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


@app.command()
@handles_errors
def status(project: ProjectOpt, json: JsonOpt = False):
    """Show each step's state, timing, key figures and whether an input changed since.

    Example: prunectl status -p runs/exp1
    """
    from prunectl.steps.pipeline import status_rows

    rows = status_rows(project)
    if json:
        typer.echo(jsonlib.dumps(rows, default=str))
        return
    from rich.table import Table

    table = Table(title=f"prunectl status: {project}", title_justify="left")
    for column in ("step", "state", "finished", "time", "figures"):
        table.add_column(column)
    for row in rows:
        state = row["status"] + (" [yellow](stale)[/]" if row.get("stale") else "")
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in (row.get("summary") or {}).items())
        seconds = row.get("duration_s")
        table.add_row(row["step"], state, row.get("finished") or "",
                      f"{seconds:.1f}s" if seconds else "", figures)
    UI().out.print(table)


# --- recipes for pip users --------------------------------------------------------------------
recipes_app = typer.Typer(help="The recipes shipped with prunectl: list them, copy one to edit.",
                          no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("ls")
@handles_errors
def recipes_ls():
    """List the shipped recipes, one line each."""
    from prunectl import catalog

    for name, path in catalog.shipped().items():
        typer.echo(f"{name:32} {catalog.describe(path)}")


@recipes_app.command("cp")
@handles_errors
def recipes_cp(name: Annotated[str, typer.Argument(help="A name from `prunectl recipes ls`.")],
               dest: Annotated[Path, typer.Argument(help="File, or directory to copy into.")]):
    """Copy a shipped recipe to edit.

    Example: prunectl recipes cp llama2-7b-flap my-flap.yaml
    """
    from prunectl import catalog

    typer.echo(str(catalog.copy(name, dest)))


@app.command()
@handles_errors
def validate(recipe: Annotated[Path, typer.Option("-r", "--recipe", help="Recipe YAML.",
                                                  dir_okay=False)],
             set: SetOpt = None):
    """Check a recipe and the model's config (no weights, nothing computed, no project).

    Example: prunectl validate -r my-flap.yaml --set target.params_ratio=0.3
    """
    from prunectl import preflight
    from prunectl.recipe import load_recipe

    loaded, _ = load_recipe(recipe, list(set or []))
    typer.echo(preflight.describe(loaded, preflight.check(loaded)))


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
