"""Everything a project has measured, read back from its files (for reports and comparisons).

Every part is optional: a project that stopped after ``search`` still has a curve to show, one
that never ran ``eval --speed`` simply has no speed figures.  An unreadable plan or model summary
counts as missing; a damaged evaluation result is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunectl.errors import UserError
from prunectl.io import CorruptFileError, read_json
from prunectl.plan import Plan

#: the order models appear in tables: as the pipeline produces them
MODEL_ORDER = ("dense", "pruned", "recovered")


@dataclass
class ModelResults:
    """What was measured for one model of the project (``eval/<name>/``)."""

    name: str
    perplexity: dict[str, float] = field(default_factory=dict)  # dataset -> perplexity
    tasks: dict[str, dict] = field(default_factory=dict)  # task -> saved record
    speed: dict[str, Any] | None = None
    parameters: dict[str, int] | None = None  # {"total", "non_embedding"}


@dataclass
class ProjectResults:
    root: Path
    plan: Plan | None = None
    pruned_info: dict[str, Any] | None = None  # pruned/prunectl.json
    recipe: dict[str, Any] | None = None
    models: dict[str, ModelResults] = field(default_factory=dict)
    pareto: dict[str, list[dict]] | None = None  # search/pareto.json of a sweep

    @property
    def structure(self) -> list[dict]:
        """Per dense layer: attention/mlp kept, heads, kv_heads, intermediate channels kept."""
        return list((self.pruned_info or {}).get("per_layer") or [])


def _json(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _result(path: Path) -> Any:
    """An evaluation result: absent is None, but a damaged one is refused (a dropped file
    would silently remove a column from the report)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (CorruptFileError, OSError):
        raise UserError(f"{path} is damaged (not a JSON result); re-run `prunectl eval --force`"
                        f" on the project, or delete {path}") from None


def _model(root: Path, name: str, pruned_info: dict | None) -> ModelResults:
    directory = root / "eval" / name
    result = ModelResults(name)
    for path in sorted(directory.glob("perplexity-*.json")):
        data = _result(path)
        if isinstance(data, dict) and data.get("perplexity") is not None:
            dataset = path.stem.removeprefix("perplexity-")
            result.perplexity[dataset] = float(data["perplexity"])
    for path in sorted((directory / "tasks").glob("*.json")):
        data = _result(path)
        if isinstance(data, dict) and "task" in data:
            result.tasks[data["task"]] = data
    speed = _result(directory / "speed.json")
    result.speed = speed if isinstance(speed, dict) else None
    if result.speed and result.speed.get("parameters"):
        result.parameters = result.speed["parameters"]
    elif pruned_info:
        # LoRA is merged into the pruned shapes, so the recovered model counts as the pruned one
        result.parameters = pruned_info.get("dense" if name == "dense" else "pruned")
    return result


def _recipe(root: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load((root / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def load_results(root: Path) -> ProjectResults:
    """Read whatever the project at ``root`` has computed so far."""
    root = Path(root)
    results = ProjectResults(root, recipe=_recipe(root))
    plan = _json(root / "search" / "plan.json")
    if isinstance(plan, dict):
        try:
            results.plan = Plan.model_validate(plan)
        except ValueError:
            results.plan = None
    info = _json(root / "pruned" / "prunectl.json")
    results.pruned_info = info if isinstance(info, dict) else None
    pareto = _json(root / "search" / "pareto.json")
    results.pareto = pareto if isinstance(pareto, dict) else None
    names = [n for n in MODEL_ORDER if (root / "eval" / n).is_dir()]
    names += (
        sorted(
            p.name
            for p in (root / "eval").glob("*")
            if p.is_dir() and p.name not in (*MODEL_ORDER, "tokens")
        )
        if (root / "eval").is_dir()
        else []
    )
    for name in names:
        model = _model(root, name, results.pruned_info)
        if model.perplexity or model.tasks or model.speed:
            results.models[name] = model
    return results


def speed_ratios(pruned: dict, dense: dict) -> dict[str, float | bool]:
    """Pruned / dense for every figure both measured: above 1 is faster for throughput, below 1
    is smaller for memory, parameters and disk.  ``same_device`` is False when the two were
    measured on different machines or dtypes, where the speed ratios mean little."""
    ratios: dict[str, float | bool] = {}

    def put(name: str, a: float | None, b: float | None) -> None:
        if a is not None and b:
            ratios[name] = round(a / b, 4)

    dense_prefill = {r["seq_len"]: r["tokens_per_s"] for r in dense.get("prefill", [])}
    for row in pruned.get("prefill", []):
        put(f"prefill_{row['seq_len']}", row["tokens_per_s"], dense_prefill.get(row["seq_len"]))
    dense_decode = {r["batch"]: r["tokens_per_s"] for r in dense.get("decode", [])}
    for row in pruned.get("decode", []):
        put(f"decode_b{row['batch']}", row["tokens_per_s"], dense_decode.get(row["batch"]))
    put(
        "peak_memory",
        pruned.get("memory", {}).get("peak_bytes"),
        dense.get("memory", {}).get("peak_bytes"),
    )
    put(
        "parameters",
        pruned.get("parameters", {}).get("total"),
        dense.get("parameters", {}).get("total"),
    )
    put("disk", pruned.get("disk_bytes"), dense.get("disk_bytes"))
    ratios["same_device"] = (pruned.get("device"), pruned.get("dtype")) == (
        dense.get("device"),
        dense.get("dtype"),
    )
    return ratios
