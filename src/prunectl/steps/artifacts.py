"""Where each step's files live, and loading them (once per process) for the steps after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunectl.context import RunContext
from prunectl.errors import UserError
from prunectl.io import load_tensors, read_json
from prunectl.plan import Plan

TOKENS = ("calibration", "tokens.safetensors")
STATS = ("calibration", "stats.safetensors")
SCORES = ("scores", "scores.safetensors")
PROGRESS = ("search", "progress.jsonl")
PLAN = ("search", "plan.json")
PRUNED = ("pruned",)
RECOVERED_MODEL = ("recovered", "model")
EXPORT = ("export",)

#: model roles in the order a pipeline produces them, with the directory each one lives in
MODEL_DIRS: dict[str, tuple[str, ...]] = {"pruned": PRUNED, "recovered": RECOVERED_MODEL}


def path(run: RunContext, parts: tuple[str, ...]) -> Path:
    return run.project.path(*parts)


def require(run: RunContext, parts: tuple[str, ...], step: str) -> Path:
    """The file an earlier step wrote, or a clear error naming the step to run first."""
    target = path(run, parts)
    if not target.exists():
        raise UserError(
            f"{target} does not exist; run `prunectl {step} -p {run.project.root}` first"
        )
    return target


def check_memory(run: RunContext, step: str) -> None:
    """Say what the step will need, and refuse before loading anything if it cannot fit."""
    from prunectl import memory_estimate
    from prunectl.modeling.loading import load_config

    if run.recipe.model.device_map is not None:
        return  # accelerate spreads the model over the devices it was given
    need = memory_estimate.estimate(step, load_config(run.recipe.model), run.recipe, run.dtype)
    run.ui.info(f"[dim]{need.describe()}[/]")
    memory_estimate.check(need, run.device, run.recipe.execution.memory_budget_gb)


def dense_model(run: RunContext) -> tuple[Any, Any]:
    """The recipe's model and tokenizer, loaded once per process; with ``execution.mode:
    layerwise`` the weights stay in host memory and stream to the device layer by layer."""
    if "dense" not in run.models:
        from prunectl.modeling.loading import load_model

        layerwise = run.recipe.execution.mode == "layerwise"
        run.ui.info(f"loading {run.recipe.model.path} ({run.dtype}, {run.device}"
                    f"{', layer-wise' if layerwise else ''})")
        device = torch.device("cpu") if layerwise else run.device
        model, tokenizer = load_model(run.recipe.model, device, run.dtype)
        if layerwise:
            from prunectl.modeling.placement import stream_layers

            model = stream_layers(model, run.device)
        run.models["dense"] = (model, tokenizer)
    return run.models["dense"]


def project_model(run: RunContext, role: str) -> Any:
    """A model and tokenizer saved in the project (``pruned`` or ``recovered``), loaded once."""
    if role not in run.models:
        from prunectl.modeling.loading import load_project_model, load_project_tokenizer

        directory = require(run, MODEL_DIRS[role], "apply" if role == "pruned" else "recover")
        model = load_project_model(directory, run.device, run.dtype)
        run.models[role] = (model, load_project_tokenizer(directory))
    return run.models[role]


def forget_dense(run: RunContext) -> None:
    """Drop the cached dense model after a step changed it in place (``apply`` slices it)."""
    run.models.pop("dense", None)


def calibration_tokens(run: RunContext) -> torch.Tensor:
    if not path(run, TOKENS).exists():
        return torch.empty(0, 0, dtype=torch.long)
    return load_tensors(path(run, TOKENS))["input_ids"]


def statistics(run: RunContext) -> dict[str, torch.Tensor]:
    stats_file = path(run, STATS)
    return load_tensors(stats_file) if stats_file.exists() else {}


def scores(run: RunContext) -> dict[str, torch.Tensor]:
    return load_tensors(require(run, SCORES, "score"))


def sweep_plan(budget: float) -> tuple[str, ...]:
    """Where ``search --sweep`` writes the plan of one budget: ``search/plans/0.8.json``."""
    return ("search", "plans", f"{budget:g}.json")


def plan_path(run: RunContext, budget: float | None = None) -> Path:
    """The searched plan's file, or with ``budget`` that budget's plan of a sweep; a missing
    one is a user error naming the command that writes it."""
    if budget is None:
        return require(run, PLAN, "search")
    return require(run, sweep_plan(budget), f"search --sweep {budget:g}")


def plan(run: RunContext, budget: float | None = None) -> Plan:
    """The searched plan, or with ``budget`` that budget's plan of a sweep."""
    plan_file = plan_path(run, budget)
    try:
        return Plan.model_validate(read_json(plan_file))
    except ValueError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{plan_file} is not a valid plan ({first}); re-run `prunectl search --force`")
