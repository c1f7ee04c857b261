"""``prunectl compare DIR...``: one row per project, so a team sees which recipe won.

Each row describes the project's most finished model (recovered when it was evaluated, else
pruned, else dense): recipe method and target, share of parameters kept, perplexity per
dataset, the zero-shot average and the speed-up over the project's own dense model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from prunectl.errors import UserError
from prunectl.evaluation.results import MODEL_ORDER, ProjectResults, load_results, speed_ratios
from prunectl.evaluation.tasks import task_average


def _target(recipe: dict) -> str:
    target = recipe.get("target") or {}
    return ", ".join(f"{k}={v}" for k, v in target.items() if v is not None) or "–"


def _final_model(results: ProjectResults) -> str | None:
    for name in reversed(MODEL_ORDER):
        if name in results.models:
            return name
    return next(iter(results.models), None)


def _speedups(results: ProjectResults, name: str) -> dict[str, float]:
    """Prefill (longest common length) and batch-1 decode speed-ups over dense."""
    model, dense = results.models[name].speed, (results.models.get("dense") or None)
    if not model or not dense or not dense.speed or name == "dense":
        return {}
    ratios = speed_ratios(model, dense.speed)
    prefill = [k for k in ratios if k.startswith("prefill_")]
    out = {}
    if prefill:
        out["speedup_prefill"] = ratios[max(prefill, key=lambda k: int(k.split("_")[1]))]
    if "decode_b1" in ratios:
        out["speedup_decode"] = ratios["decode_b1"]
    return out


def project_row(directory: Path) -> dict[str, Any]:
    """The comparison row of one project directory."""
    directory = Path(directory)
    if not (directory / "recipe.yaml").exists() and not (directory / "state.json").exists():
        raise UserError(
            f"{directory} is not a prunectl project (no recipe.yaml or state.json); "
            "pass project directories made by `prunectl run -p DIR`"
        )
    results = load_results(directory)
    recipe = results.recipe or {}
    info = results.pruned_info or {}
    row: dict[str, Any] = {
        "project": str(directory),
        "method": (recipe.get("method") or {}).get("name")
        or (results.plan.method if results.plan else None),
        "target": _target(recipe),
    }
    if info.get("dense", {}).get("total") and info.get("pruned", {}).get("total"):
        row["params_kept"] = round(info["pruned"]["total"] / info["dense"]["total"], 4)
    if info.get("blocks_removed") is not None:
        row["blocks_removed"] = info["blocks_removed"]
    name = _final_model(results)
    row["model"] = name
    if name is None:
        return row
    model = results.models[name]
    for dataset, value in model.perplexity.items():
        row[f"ppl_{dataset}"] = value
    if model.tasks:
        row["task_average"] = task_average(model.tasks)
        row["tasks"] = len(model.tasks)
    row.update(_speedups(results, name))
    return row


def compare_projects(dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per project directory, in the order given."""
    if not dirs:
        raise UserError("compare needs at least one project directory")
    return [project_row(d) for d in dirs]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "task_average" or key == "params_kept":
        return f"{100 * value:.2f}%"
    if key.startswith("speedup_"):
        return f"×{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def compare_table(rows: list[dict[str, Any]]) -> Table:
    """The rows as a rich table, one column per project (a few projects with many figures fit a
    terminal that one row per project would truncate); every figure any project has is a row."""
    fields = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "project"]
    table = Table(title="prunectl compare", title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column(Path(row["project"]).name or row["project"], justify="right")
    for name in fields:
        table.add_row(name, *(_cell(name, row.get(name)) for row in rows))
    return table
