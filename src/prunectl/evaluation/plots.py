"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: it keeps global figure state and picks a backend for the whole process, and a
report written from inside a long pipeline (or a test) must not change either.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

DPI = 120


def _save(figure: Figure, path: Path) -> Path:
    """Render to a temporary file and rename, so a half-written PNG never replaces a good one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    FigureCanvasAgg(figure)
    figure.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    tmp.replace(path)
    return path


def perplexity_curve(curve: list[dict], chosen: int | None, path: Path, title: str = "") -> Path:
    """Perplexity (log scale) against the number of blocks removed, with the share of parameters
    removed on a second axis and the chosen block count marked."""
    points = [p for p in curve if p.get("perplexity") is not None]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    blocks = [p["blocks"] for p in points]
    axes.plot(blocks, [p["perplexity"] for p in points], marker="o", color="tab:blue")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    values = [p["perplexity"] for p in points]
    if values and max(values) < 10 * min(values):  # under one decade: label the minor ticks too
        axes.yaxis.set_minor_formatter(ScalarFormatter())
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("blocks removed")
    axes.set_ylabel("calibration perplexity", color="tab:blue")
    axes.grid(True, which="both", alpha=0.3)
    ratios = [(p["blocks"], p["params_ratio"]) for p in points if p.get("params_ratio") is not None]
    if ratios:
        twin = axes.twinx()
        twin.plot(*zip(*ratios, strict=True), linestyle="--", color="tab:gray")
        twin.set_ylabel("share of parameters removed", color="tab:gray")
    if chosen is not None:
        axes.axvline(chosen, color="tab:red", alpha=0.6, label=f"chosen: {chosen} blocks")
        axes.legend(loc="upper left")
    axes.set_title(title or "Perplexity vs blocks removed")
    return _save(figure, path)


def _dense_reference(rows: list[dict], key: str, untouched: set[int]) -> int | None:
    values = {r[key] for r in rows if r["layer"] in untouched}
    return values.pop() if len(values) == 1 else None


def layer_structure(rows: list[dict], untouched: set[int], path: Path, title: str = "") -> Path:
    """Per layer: attention heads (and KV heads) kept, MLP channels kept; removed blocks marked
    with a red x.  The dashed line is the dense count, read from a layer the plan left alone."""
    layers = [r["layer"] for r in rows]
    figure = Figure(figsize=(max(7, 0.3 * len(rows)), 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.bar(layers, [r["heads"] for r in rows], color="tab:blue", label="query heads")
    top.bar(layers, [r["kv_heads"] for r in rows], color="tab:cyan", width=0.5, label="KV heads")
    bottom.bar(layers, [r["intermediate"] for r in rows], color="tab:green", label="MLP channels")
    for axes, flag, key in ((top, "attention", "heads"), (bottom, "mlp", "intermediate")):
        removed = [r["layer"] for r in rows if not r[flag]]
        if removed:
            axes.scatter(
                removed,
                [0] * len(removed),
                marker="x",
                color="tab:red",
                s=60,
                zorder=3,
                label=f"{flag} block removed",
            )
        dense = _dense_reference(rows, key, untouched)
        if dense is not None:
            axes.axhline(dense, linestyle="--", color="gray", linewidth=1, label="dense")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        axes.grid(True, axis="y", alpha=0.3)
    top.set_ylabel("heads kept")
    bottom.set_ylabel("channels kept")
    bottom.set_xlabel("layer")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_title(title or "Structure of the pruned model")
    return _save(figure, path)


def pareto(series: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Calibration perplexity (log scale) against parameters kept, one line per series (a
    sweep's plans and its references); points are ``{"params": n, "perplexity": p,
    "budget": b}``, each labelled with its budget."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for (label, points), marker in zip(series.items(), "osD^v<>", strict=False):
        points = sorted((p for p in points if p.get("perplexity") is not None),
                        key=lambda p: p["params"])
        if not points:
            continue
        xs, ys = [p["params"] for p in points], [p["perplexity"] for p in points]
        axes.plot(xs, ys, marker=marker, label=label)
        for p in points:
            axes.annotate(f"{p['budget']:g}", (p["params"], p["perplexity"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.set_xlabel("parameters kept")
    axes.set_ylabel("calibration perplexity")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(title or "Calibration perplexity vs parameters")
    return _save(figure, path)


def perplexity_per_byte(series: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Perplexity (log scale) against GGUF file size, one line per model (dense, pruned,
    recovered), each point labelled with its tensor type: where pruning beats quantizing further
    at a size budget.  Points are ``{"bytes": n, "perplexity": p, "label": type}``."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for (model, points), marker in zip(series.items(), "osD^v<>", strict=False):
        points = sorted(points, key=lambda p: p["bytes"])
        axes.plot([p["bytes"] / 2**20 for p in points], [p["perplexity"] for p in points],
                  marker=marker, label=model)
        for p in points:
            axes.annotate(p["label"], (p["bytes"] / 2**20, p["perplexity"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.set_xlabel("GGUF file size (MiB)")
    axes.set_ylabel("perplexity in llama.cpp")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(title or "Perplexity vs file size")
    return _save(figure, path)
