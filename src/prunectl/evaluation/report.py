"""``prunectl report``: one page with the figures a pruning paper shows, from the project's files.

``eval/report.md`` holds the comparison table (dense / pruned / recovered: parameters,
perplexity, task accuracies and their average, speed and memory), the perplexity-vs-blocks
curve from the search record, the per-layer structure of the pruned model against the dense
one and, after a ``search --sweep``, the Pareto plot of the sweep (copied from ``search/``),
each as a PNG beside the report with its data as a table.  ``eval/summary.json`` keeps the
same table as data, and :func:`summary_table_markdown` gives the table alone for the exported
model card.  Whatever has not been computed yet is left out; nothing is recomputed here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prunectl.evaluation.llama_cpp import report_section as llama_cpp_section
from prunectl.evaluation.results import ProjectResults, load_results
from prunectl.evaluation.tasks import PAPER_TASKS
from prunectl.io import write_json, write_text
from prunectl.plan import LayerPlan, Plan

CURVE_PNG = "perplexity_vs_blocks.png"
STRUCTURE_PNG = "pruned_structure.png"
PARETO_PNG = "pareto.png"
GIB = 1024**3


def _task_order(results: ProjectResults) -> list[str]:
    seen = {t for m in results.models.values() for t in m.tasks}
    return [t for t in PAPER_TASKS if t in seen] + sorted(seen - set(PAPER_TASKS))


def _common_tasks(results: ProjectResults) -> list[str]:
    """Tasks every model with task results has: only those make averages comparable."""
    sets = [set(m.tasks) for m in results.models.values() if m.tasks]
    common = set.intersection(*sets) if sets else set()
    return [t for t in _task_order(results) if t in common]


def _speed_rows(results: ProjectResults) -> list[dict]:
    speeds = {n: m.speed for n, m in results.models.items() if m.speed}
    if not speeds:
        return []
    rows = []
    lengths = _shared(speeds, "prefill", "seq_len")
    if lengths:
        longest = max(lengths)
        rows.append(_rate_row(speeds, "prefill", "seq_len", longest,
                              f"prefill tokens/s (seq {longest})", f"prefill_{longest}"))
    for batch in sorted(_shared(speeds, "decode", "batch")):
        rows.append(_rate_row(speeds, "decode", "batch", batch,
                              f"decode tokens/s (batch {batch})", f"decode_b{batch}"))
    sources = {s.get("memory", {}).get("source") for s in speeds.values()}
    rows.append(
        _row(
            f"peak memory GiB ({'/'.join(sorted(filter(None, sources)))})",
            "peak_memory",
            "memory",
            {n: s.get("memory", {}).get("peak_bytes") for n, s in speeds.items()},
        )
    )
    return rows


def _shared(speeds: dict[str, dict], section: str, setting: str) -> set:
    """Values of ``setting`` (a prefill length, a decode batch) every model was measured at."""
    return set.intersection(*({r[setting] for r in s.get(section, [])} for s in speeds.values()))


def _rate_row(speeds: dict[str, dict], section: str, setting: str, value: Any, metric: str,
              key: str) -> dict:
    """Tokens per second of every model in ``section`` at ``setting == value``."""
    return _row(metric, key, "rate", {
        n: next(r["tokens_per_s"] for r in s[section] if r[setting] == value)
        for n, s in speeds.items()})


def _row(metric: str, key: str, kind: str, values: dict[str, Any]) -> dict:
    return {
        "metric": metric,
        "key": key,
        "kind": kind,
        "values": {k: v for k, v in values.items() if v is not None},
    }


def summary_rows(results: ProjectResults) -> list[dict]:
    """The comparison table as data: one row per figure, one value per model."""
    models = results.models
    rows = [
        _row(
            "parameters",
            "params",
            "count",
            {n: (m.parameters or {}).get("total") for n, m in models.items()},
        )
    ]
    datasets = sorted({d for m in models.values() for d in m.perplexity})
    rows += [
        _row(
            f"perplexity ({d})",
            f"ppl_{d}",
            "ppl",
            {n: m.perplexity.get(d) for n, m in models.items()},
        )
        for d in datasets
    ]
    for task in _task_order(results):
        record = next(m.tasks[task] for m in models.values() if task in m.tasks)
        rows.append(
            _row(
                f"{task} ({record.get('average_metric')})",
                task,
                "accuracy",
                {n: (m.tasks.get(task) or {}).get("score") for n, m in models.items()},
            )
        )
    common = _common_tasks(results)
    if common:
        rows.append(
            _row(
                f"task average ({len(common)} task{'s' if len(common) > 1 else ''})",
                "task_average",
                "accuracy",
                {
                    n: sum(m.tasks[t]["score"] for t in common) / len(common)
                    for n, m in models.items()
                    if m.tasks and all(m.tasks[t].get("score") is not None for t in common)
                },
            )
        )
    rows += _speed_rows(results)
    return [r for r in rows if r["values"]]


def _format(kind: str, value: float, dense: float | None) -> str:
    if kind == "count":
        text = (
            f"{value / 1e9:.2f}B"
            if value >= 1e9
            else f"{value / 1e6:.1f}M"
            if value >= 1e6
            else f"{value:,}"
        )
        return text + (f" ({value / dense:.1%})" if dense else "")
    if kind == "ppl":
        return f"{value:.2f}"
    if kind == "accuracy":
        return f"{100 * value:.2f}"
    if kind == "memory":
        return f"{value / GIB:.2f}" + (f" (×{value / dense:.2f})" if dense else "")
    return f"{value:,.1f}" + (f" (×{value / dense:.2f})" if dense else "")


def table_markdown(rows: list[dict], models: list[str]) -> str:
    lines = ["| metric | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
    for row in rows:
        dense = row["values"].get("dense")
        cells = [
            _format(row["kind"], row["values"][m], dense if m != "dense" else None)
            if m in row["values"]
            else "–"
            for m in models
        ]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table_markdown(project_root: Path) -> str:
    """The dense / pruned / recovered comparison table alone (for the model card)."""
    results = load_results(project_root)
    if not results.models:
        return "No evaluation results yet (run `prunectl eval`)."
    return table_markdown(summary_rows(results), list(results.models)) + "\n\n" + _legend(results)


def _legend(results: ProjectResults) -> str:
    records = [r for m in results.models.values() for r in m.tasks.values()]
    parts = []
    if records:
        shots = sorted({r.get("num_fewshot") or 0 for r in records})
        limits = sorted({str(r["limit"]) for r in records if r.get("limit") is not None})
        parts.append(
            "Accuracies in %, "
            + ("zero-shot" if shots == [0] else f"{'/'.join(map(str, shots))}-shot")
            + (
                f", limited to {'/'.join(limits)} examples per task (not comparable to papers)"
                if limits
                else ""
            )
            + "; the metric of each task follows the pruning papers (acc_norm for HellaSwag, "
            "ARC-c and OpenBookQA, acc otherwise)."
        )
    speeds = [m.speed for m in results.models.values() if m.speed]
    if speeds:
        devices = sorted({f"{s['device'].get('name')} ({s.get('dtype')})" for s in speeds})
        parts.append(
            "Speed measured on "
            + ", ".join(devices)
            + "; (×r) is the ratio to dense."
            + (" Devices differ: speed ratios are not comparable." if len(devices) > 1 else "")
        )
    return " ".join(parts)


def _applied_plan(results: ProjectResults) -> Plan | None:
    """The plan apply used (``--blocks`` may cut the searched one), else the searched one."""
    data = (results.pruned_info or {}).get("plan")
    if isinstance(data, dict):
        try:
            return Plan.model_validate(data)
        except ValueError:
            pass
    return results.plan


def _chosen_blocks(results: ProjectResults) -> int | None:
    if results.pruned_info and results.pruned_info.get("blocks_removed") is not None:
        return int(results.pruned_info["blocks_removed"])
    blocks = (results.plan.achieved if results.plan else {}).get("blocks")
    return int(blocks) if blocks is not None else None


def _curve_section(results: ProjectResults, eval_dir: Path) -> tuple[list[str], str | None]:
    from prunectl.evaluation.plots import perplexity_curve

    curve = results.plan.curve if results.plan else []
    if not any(p.get("perplexity") is not None for p in curve):
        return [], None
    chosen = _chosen_blocks(results)
    perplexity_curve(curve, chosen, eval_dir / CURVE_PNG)
    order = results.plan.removal_order
    lines = [
        "## Perplexity vs blocks removed",
        "",
        f"![perplexity vs blocks removed]({CURVE_PNG})",
        "",
        "| blocks | removed | perplexity | parameters removed |",
        "| ---: | --- | ---: | ---: |",
    ]
    for p in curve:
        k = p.get("blocks", 0)
        name = order[k - 1] if 0 < k <= len(order) else ""
        ppl = f"{p['perplexity']:.3f}" if p.get("perplexity") is not None else "–"
        ratio = f"{p['params_ratio']:.2%}" if p.get("params_ratio") is not None else "–"
        lines.append(f"| {k}{' ←' if k == chosen else ''} | {name} | {ppl} | {ratio} |")
    return lines + [""], CURVE_PNG


def _structure_section(results: ProjectResults, eval_dir: Path) -> tuple[list[str], str | None]:
    from prunectl.evaluation.plots import layer_structure

    rows = results.structure
    if not rows:
        return [], None
    plan = _applied_plan(results)
    untouched = {r["layer"] for r in rows if plan is None or plan.layer(r["layer"]) == LayerPlan()}
    layer_structure(rows, untouched, eval_dir / STRUCTURE_PNG,
                    dense=(results.pruned_info or {}).get("dense_per_layer"))
    lines = [
        "## Structure of the pruned model",
        "",
        f"![per-layer structure]({STRUCTURE_PNG})",
        "",
        "| layer | attention | heads | KV heads | MLP | MLP channels |",
        "| ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {'kept' if r['attention'] else 'removed'} | {r['heads']} | "
            f"{r['kv_heads']} | {'kept' if r['mlp'] else 'removed'} | {r['intermediate']} |"
        )
    return lines + [""], STRUCTURE_PNG


def _pareto_section(results: ProjectResults, eval_dir: Path) -> tuple[list[str], str | None]:
    """The sweep's Pareto plot (``search --sweep``), copied beside the report, with its points."""
    import shutil

    source = results.root / "search" / PARETO_PNG
    if not source.is_file():
        return [], None
    eval_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, eval_dir / PARETO_PNG)
    lines = ["## Calibration perplexity vs parameters kept (sweep)", "",
             f"![pareto]({PARETO_PNG})", ""]
    series = results.pareto
    if series:
        lines += ["| series | budget | parameters kept | calibration perplexity |",
                  "| --- | ---: | ---: | ---: |"]
        for label, points in series.items():
            for p in points:
                ppl = p.get("perplexity")
                lines.append(f"| {label} | {p.get('budget')} | {p.get('params') or '–'} | "
                             f"{'–' if ppl is None else f'{ppl:.3f}'} |")
        lines.append("")
    return lines, PARETO_PNG


def write_report(project_root: Path) -> Path:
    """Write ``eval/report.md``, its PNGs and ``eval/summary.json``; returns the report's path."""
    results = load_results(project_root)
    eval_dir = Path(project_root) / "eval"
    recipe = results.recipe or {}
    method = (recipe.get("method") or {}).get("name") or (
        results.plan.method if results.plan else "?"
    )
    model_path = (recipe.get("model") or {}).get("path", "?")
    lines = [
        f"# prunectl report: {model_path}, {method}",
        "",
        f"Project `{Path(project_root).resolve()}`, written "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "",
    ]
    rows = summary_rows(results)
    if results.models:
        lines += [
            "## Dense, pruned and recovered",
            "",
            table_markdown(rows, list(results.models)),
            "",
            _legend(results),
            "",
        ]
    else:
        lines += ["No evaluation results yet: run `prunectl eval` to add the comparison table.", ""]
    curve_lines, curve_png = _curve_section(results, eval_dir)
    structure_lines, structure_png = _structure_section(results, eval_dir)
    pareto_lines, pareto_png = _pareto_section(results, eval_dir)
    llama_lines, llama_png = llama_cpp_section(project_root, eval_dir)
    lines += curve_lines + structure_lines + pareto_lines + llama_lines
    notes = results.plan.notes if results.plan else []
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    write_json(
        eval_dir / "summary.json",
        {
            "models": list(results.models),
            "rows": rows,
            "curve": results.plan.curve if results.plan else [],
            "chosen_blocks": _chosen_blocks(results),
            "structure": results.structure,
            "plots": [p for p in (curve_png, structure_png, pareto_png, llama_png) if p],
        },
    )
    report = eval_dir / "report.md"
    write_text(report, "\n".join(lines))
    return report
