"""``prunectl compare DIR...``: one row per project, so a team sees which recipe won.

The rule (:data:`RULE`): the projects are ranked by the perplexity of each one's best model
(the lower of pruned and recovered, named in the row) on the perplexity data set most of them
measured, read together with the share of parameters kept: rank 1 is the winner, and a project
another one beats on both perplexity and parameters kept is marked dominated.  Each row also
holds the recipe's method and target, perplexity per dataset, the zero-shot average and the
speed-up over the project's own dense model.  Projects without that perplexity are unranked.
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


RULE = ("ranked by perplexity on {dataset} of each project's best model (the lower of pruned "
        "and recovered), lower is better; read it with parameters kept: a project another keeps "
        "no more parameters than at no higher perplexity is dominated")


def _final_model(results: ProjectResults) -> str | None:
    for name in reversed(MODEL_ORDER):
        if name in results.models:
            return name
    return next(iter(results.models), None)


def _best_model(results: ProjectResults, dataset: str | None) -> str | None:
    """The project's model with the lowest perplexity on ``dataset`` (dense is the reference,
    never a candidate); with no such figure, its most finished model."""
    scored = {n: m.perplexity[dataset] for n, m in results.models.items()
              if n != "dense" and dataset in m.perplexity}
    return min(scored, key=scored.__getitem__) if scored else _final_model(results)


def ranking_dataset(projects: list[ProjectResults]) -> str | None:
    """The perplexity data set most projects' pruned or recovered models were measured on
    (wikitext2 on a tie, then by name)."""
    counts: dict[str, int] = {}
    for results in projects:
        for dataset in {d for n, m in results.models.items() if n != "dense"
                        for d in m.perplexity}:
            counts[dataset] = counts.get(dataset, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda d: (-counts[d], d != "wikitext2", d))


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


def _project_results(directory: Path) -> ProjectResults:
    directory = Path(directory)
    if not (directory / "recipe.yaml").exists() and not (directory / "state.json").exists():
        raise UserError(
            f"{directory} is not a prunectl project (no recipe.yaml or state.json); "
            "pass project directories made by `prunectl run -p DIR`"
        )
    return load_results(directory)


def _row(results: ProjectResults, dataset: str | None) -> dict[str, Any]:
    directory = results.root
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
    name = _best_model(results, dataset)
    row["model"] = name
    dense = results.models.get("dense")
    if dataset and dense and dataset in dense.perplexity:
        row["dense_ppl"] = dense.perplexity[dataset]
    if name is None:
        return row
    model = results.models[name]
    for measured, value in model.perplexity.items():
        row[f"ppl_{measured}"] = value
    if model.tasks:
        row["task_average"] = task_average(model.tasks)
        row["tasks"] = len(model.tasks)
    row.update(_speedups(results, name))
    return row


def compare_projects(dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per project directory, in the order given, each with its ``rank`` (None when
    it has no perplexity on the ranking data set ``ranked_by``), ``winner``, ``dominated_by``
    and the ``rule`` that ranked it."""
    if not dirs:
        raise UserError("compare needs at least one project directory")
    projects = [_project_results(d) for d in dirs]
    dataset = ranking_dataset(projects)
    rows = [_row(results, dataset) for results in projects]
    key = f"ppl_{dataset}"
    ranked = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r[key])
    for row in rows:
        row["rank"] = next((i for i, r in enumerate(ranked, 1) if r is row), None)
        row["winner"] = row["rank"] == 1
        row["ranked_by"] = dataset
        row["rule"] = RULE.format(dataset=dataset) if dataset else "no perplexity to rank by"
        row["dominated_by"] = next((other["project"] for other in ranked
                                    if row["rank"] and _dominates(other, row, key)), None)
    return rows


def _dominates(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """``a`` keeps no more parameters at no higher perplexity, and is better in one of them."""
    a_kept, b_kept = a.get("params_kept", 1.0), b.get("params_kept", 1.0)
    return a[key] <= b[key] and a_kept <= b_kept and (a[key], a_kept) != (b[key], b_kept)


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


def compare_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """``--plot FILE``: perplexity against parameters kept across the projects."""
    from prunectl.evaluation.plots import projects_plot

    dataset = rows[0]["ranked_by"] if rows else None
    if dataset is None:
        raise UserError("compare --plot: no project has a perplexity to plot; run `prunectl eval` "
                        "with eval.perplexity.datasets first")
    key = f"ppl_{dataset}"
    points = [{"label": f"{_name(r)} ({r['model']})", "kept": r.get("params_kept", 1.0),
               "perplexity": r[key], "winner": r["winner"], "dense": r.get("dense_ppl")}
              for r in rows if r.get(key) is not None]
    return projects_plot(points, Path(path), dataset)


def _name(row: dict[str, Any]) -> str:
    return Path(row["project"]).name or row["project"]


def compare_table(rows: list[dict[str, Any]]) -> Table:
    """The rows as a rich table, one column per project (a few projects with many figures fit a
    terminal that one row per project would truncate), the winner's column marked; every
    figure any project has is a row, the ranking rule is the caption."""
    hidden = {"project", "rank", "winner", "rule", "ranked_by", "dominated_by"}
    fields = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in hidden]
    table = Table(title="prunectl compare", title_justify="left", caption_justify="left",
                  caption=f"Rank: {rows[0]['rule']}." if rows else None)
    table.add_column("")
    for row in rows:
        table.add_column(f"★ {_name(row)} (winner)" if row["winner"] else _name(row),
                         justify="right")
    table.add_row("rank", *(str(r["rank"]) if r["rank"] else "unranked" for r in rows))
    if any(r["dominated_by"] for r in rows):
        table.add_row("dominated by", *(Path(r["dominated_by"]).name if r["dominated_by"]
                                        else "–" for r in rows))
    for name in fields:
        table.add_row(name, *(_cell(name, row.get(name)) for row in rows))
    return table
