"""Zero-shot tasks through lm-evaluation-harness, on the model already in memory.

lm-eval's ``HFLM`` accepts a model instance, so the dense, pruned (non-uniform classes included:
they are ``PreTrainedModel`` subclasses) and recovered models are evaluated without a reload.
Each task runs in its own ``simple_evaluate`` call and is saved as ``<out_dir>/<task>.json`` the
moment it finishes, so an interrupted run or a task that cannot be loaded keeps the finished ones,
and a re-run with the same model fingerprint, few-shot count and limit skips them.

Which metric enters the average follows the pruning papers' tables (LLM-Pruner, FLAP,
BlockPruner): ``acc_norm`` for HellaSwag, ARC-challenge and OpenBookQA, ``acc`` for BoolQ, PIQA,
WinoGrande and ARC-easy.  LLM-Pruner never wrote this down; it is what reproduces its Table 1
(horseee/LLM-Pruner issue #25: the reproduced ``acc`` matches BoolQ/PIQA/WinoGrande/ARC-e and
``acc_norm`` matches HellaSwag/ARC-c/OBQA).  Both metrics are always saved.

Under torchrun every rank evaluates a strided share of each task's documents through lm-eval's
own data parallelism (:mod:`prunectl.evaluation.lm_eval_model`); rank 0 gets the complete
metrics, writes the files, and hands every rank the same records.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunectl.digest import check_sealed, sealed_write
from prunectl.errors import UserError
from prunectl.io import read_json, write_json
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:  # reading saved task results (report, compare) needs no torch
    from prunectl.distributed import Distributed

#: the seven zero-shot tasks of LLM-Pruner / FLAP / BlockPruner tables
PAPER_TASKS = [
    "boolq",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
]

#: tasks whose paper tables report length-normalised accuracy; every other task uses ``acc``
PAPER_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}

#: keys of a saved result that must match for it to be reused
RESUME_KEYS = ("model_fingerprint", "num_fewshot", "limit")


def task_file(out_dir: Path, task: str) -> Path:
    """``<out_dir>/<task>.json``; a task given as a YAML path gets a file-system-safe name."""
    return Path(out_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', task)}.json"


def average_metric(task: str, metrics: dict[str, float]) -> str | None:
    """The metric of ``task`` that enters the average (see the module docstring)."""
    preferred = PAPER_METRIC.get(task, "acc")
    for name in (preferred, "acc", "acc_norm"):
        if name in metrics:
            return name
    return next(iter(metrics), None)


def task_average(records: dict[str, dict]) -> float | None:
    """Mean of the per-task scores (each task's ``average_metric``), None when there are none."""
    scores = [r["score"] for r in records.values() if r.get("score") is not None]
    return sum(scores) / len(scores) if scores else None


def _metrics(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """lm-eval's ``"acc,none"`` / ``"acc_stderr,none"`` keys as two plain dicts."""
    values: dict[str, float] = {}
    stderrs: dict[str, float] = {}
    for key, value in results.items():
        name, _, _filter = key.partition(",")
        if not _filter or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if name.endswith("_stderr"):
            stderrs.setdefault(name.removesuffix("_stderr"), float(value))
        else:
            values.setdefault(name, float(value))
    return values, stderrs


def _reusable(path: Path, settings: dict[str, Any]) -> dict | None:
    if path.exists():  # as it was written: a changed result is refused, not reused
        check_sealed(path, f"re-run `prunectl eval --force`, or delete {path}")
    try:
        saved = read_json(path)
    except (OSError, ValueError):  # missing, or torn by a crash: evaluate again
        return None
    if all(saved.get(k) == settings[k] for k in RESUME_KEYS):
        return saved
    return None


@functools.lru_cache(maxsize=4)
def _index(paths: tuple[str, ...], defaults: bool):
    """lm-eval's task index, built once per process for the dense, pruned and recovered runs."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


def _task_manager(tasks: list[str], task_paths: list[str]):
    """A TaskManager that knows ``tasks``.  Indexing lm-eval's ~15k built-in tasks takes seconds,
    so when every task is one of the user's own YAMLs only ``task_paths`` is indexed."""
    paths = tuple(str(Path(p).expanduser().resolve()) for p in task_paths)
    for p in paths:
        if not Path(p).exists():
            raise UserError(f"eval.task_paths entry {p} does not exist; fix the path or remove it")
        if not _index((p,), False).all_tasks:
            raise UserError(
                f"eval.task_paths entry {p} defines no lm-eval task (no YAML there with a valid "
                "`task:` entry); fix the YAML (lm-eval's task format) or remove the entry"
            )
    if paths:
        own = _index(paths, False)
        if all(t in own.all_tasks for t in tasks):
            return own
    return _index(paths, True)


def check_tasks(tasks: list[str], task_paths: list[str]) -> None:
    """Refuse an unknown task name or a bad ``task_paths`` entry before anything is evaluated
    (whether a known task's dataset loads is found out when it runs)."""
    names = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    manager = _task_manager(names, list(task_paths))
    unknown = [_unknown(t, manager) for t in names if t not in manager.all_tasks]
    if unknown:
        raise UserError("; ".join(unknown) + "; check the name or add its YAML directory to "
                        "eval.task_paths")


def _unknown(task: str, manager) -> str:
    close = difflib.get_close_matches(task, manager.all_tasks, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown lm-eval task '{task}'{hint}"


def _load(task: str, manager) -> tuple[list, list]:
    """Build ``task`` (downloads or reads its dataset): the specs to hand to ``simple_evaluate``
    and its leaf tasks, whose instances tell how many requests this rank ran."""
    loaded = manager.load([task])
    leaves = list(loaded["tasks"].values())
    if task in loaded["groups"]:
        return [loaded["groups"][task]], leaves
    return leaves, leaves


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    *,
    task_paths: list[str] = (),
    num_fewshot: int = 0,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    out_dir: Path,
    model_label: str,
    dtype: str,
    model_fingerprint: str,
    ui: UI | None = None,
) -> dict[str, float]:
    """Evaluate ``tasks`` and save one JSON per task; returns ``{task: score, "task_average": x}``.

    Tasks already saved with the same ``model_fingerprint``, ``num_fewshot`` and ``limit`` are
    read back instead of run.  A task that cannot be loaded (unknown name, dataset unreachable
    offline) raises :class:`UserError` naming it, after every other task has run and been saved.
    """
    ui = ui or SILENT
    out_dir = Path(out_dir)
    tasks = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    settings = {
        "model": model_label,
        "model_fingerprint": model_fingerprint,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
        "dtype": dtype,
    }
    from prunectl.distributed import current

    group = current()
    records: dict[str, dict] = {}
    if group.is_main:  # rank 0 decides what is done; every rank must run the same tasks
        for task in tasks:
            saved = _reusable(task_file(out_dir, task), settings)
            if saved is not None:
                ui.info(f"{model_label}: {task} already evaluated ({task_file(out_dir, task)})")
                records[task] = saved
    records = group.broadcast_object(records)
    pending = [task for task in tasks if task not in records]

    failures: list[str] = []
    if pending:
        manager = _task_manager(pending, list(task_paths))
        lm = None
        for task in pending:
            if task not in manager.all_tasks:
                failures.append(_unknown(task, manager))
                continue
            specs, leaves, problem = [], [], None
            try:
                specs, leaves = _load(task, manager)
            except Exception as error:  # dataset missing or unreachable: the user's to fix
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                problem = (
                    f"lm-eval task '{task}' could not be loaded ({type(error).__name__}: {first})"
                )
            problems = [p for p in group.gather_objects(problem) if p]  # skipped by all or none
            if problems:
                failures.append(problems[0])
                continue
            lm = lm or _wrap(model, tokenizer, batch_size, group)
            ui.info(f"{model_label}: evaluating {task}")
            records[task] = _evaluate(lm, group, task, specs, leaves, manager, settings, ui)
            if group.is_main:
                sealed_write(task_file(out_dir, task),
                             functools.partial(write_json, task_file(out_dir, task), records[task]))
    if failures:
        raise UserError(
            "; ".join(failures) + "; check the name, add its YAML directory to eval.task_paths, "
            "or make its dataset reachable (HF_DATASETS_OFFLINE needs it cached)"
        )
    figures: dict[str, float] = {t: records[t]["score"] for t in tasks if t in records}
    average = task_average(records)
    if average is not None:
        figures["task_average"] = round(average, 6)
    return figures


def _wrap(model, tokenizer, batch_size: int | str, group: Distributed):
    """lm-eval's wrapper around the in-memory model.  It may set a pad token on the tokenizer it
    gets, so it gets a copy: the caller's tokenizer is saved with the model later."""
    from prunectl.evaluation.lm_eval_model import GroupHFLM

    return GroupHFLM(model, copy.deepcopy(tokenizer), batch_size, group)


def _documents(leaves: list, limit: float | None) -> int:
    """The fewest documents any leaf task evaluates under ``limit``."""
    from lm_eval.evaluator_utils import get_sample_size

    return min(min(len(t.eval_docs), get_sample_size(t, limit) or len(t.eval_docs)) for t in leaves)


def _evaluate(
    lm, group: Distributed, task: str, specs: list, leaves: list, manager, settings: dict, ui: UI
) -> dict:
    """Run one task (already loaded into ``specs``) on every rank; every rank returns rank 0's
    record.  lm-eval stops a rank whose share has no documents ("did not find any docs"), so a
    task with fewer documents than ranks runs on rank 0 alone while the others wait."""
    import lm_eval
    import lm_eval.evaluator

    runs = group
    if group.enabled and _documents(leaves, settings["limit"]) < group.world_size:
        from prunectl.distributed import Distributed

        runs = Distributed()
        ui.info(f"{settings['model']}: {task} has fewer documents than ranks, rank 0 runs it")
        if not group.is_main:
            return group.broadcast_object(None)
    lm.join(runs)
    started = time.perf_counter()
    output = lm_eval.evaluator.simple_evaluate(
        model=lm,
        tasks=specs,
        num_fewshot=settings["num_fewshot"],
        limit=settings["limit"],
        task_manager=manager,
        log_samples=False,
        verbosity="ERROR" if ui.quiet else None,
    )
    shares = runs.gather_objects(sum(len(t.instances) for t in leaves))
    record = None
    if group.is_main:
        record = _record(task, output, settings, lm_eval.__version__, lm)
        record["requests_per_rank"] = shares
        record["duration_s"] = round(time.perf_counter() - started, 3)
        if runs.enabled:
            ui.info(f"{settings['model']}: {task} ran {sum(shares)} requests, per rank {shares}")
    return group.broadcast_object(record)


def _record(task: str, output: dict, settings: dict, version: str, lm) -> dict:
    """The saved result of one task: both accuracies, their stderr, and how they were made."""
    results = output["results"]
    metrics, stderr = _metrics(results.get(task) or next(iter(results.values()), {}))
    chosen = average_metric(task, metrics)
    subtasks = {name: _metrics(values)[0] for name, values in results.items() if name != task}
    return {
        "task": task,
        **settings,
        "acc": metrics.get("acc"),
        "acc_stderr": stderr.get("acc"),
        "acc_norm": metrics.get("acc_norm"),
        "acc_norm_stderr": stderr.get("acc_norm"),
        "average_metric": chosen,
        "score": metrics.get(chosen) if chosen else None,
        "metrics": metrics,
        "stderr": stderr,
        "subtasks": subtasks,
        "n_samples": output.get("n-samples", {}).get(task),
        "task_version": output.get("versions", {}).get(task),
        "lm_eval_version": version,
        "device": str(lm.device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
