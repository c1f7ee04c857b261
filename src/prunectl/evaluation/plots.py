"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: it keeps global figure state and picks a backend for the whole process, and a
report written from inside a long pipeline (or a test) must not change either.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter, ScalarFormatter

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
    _log_perplexity_axis(axes, [p["perplexity"] for p in points])
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


def layer_structure(rows: list[dict], untouched: set[int], path: Path, title: str = "",
                    dense: list[dict] | None = None) -> Path:
    """Per layer: attention heads (and KV heads) kept, MLP channels kept; removed blocks marked
    with a red x.  The dense reference is ``dense`` (the dense model's rows, drawn as outlined
    bars, so it shows even when every layer was cut), else a dashed line at the count of a
    layer the plan left alone; the y axis always reaches the dense count."""
    return _save(structure_figure(rows, untouched, title, dense), path)


def structure_figure(rows: list[dict], untouched: set[int], title: str = "",
                     dense: list[dict] | None = None) -> Figure:
    """The figure :func:`layer_structure` saves."""
    layers = [r["layer"] for r in rows]
    figure = Figure(figsize=(max(7, 0.3 * len(rows)), 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    if dense:
        top.bar([r["layer"] for r in dense], [r["heads"] for r in dense], fill=False,
                edgecolor="gray", linestyle="--", label="dense")
        bottom.bar([r["layer"] for r in dense], [r["intermediate"] for r in dense], fill=False,
                   edgecolor="gray", linestyle="--", label="dense")
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
        reference = None if dense else _dense_reference(rows, key, untouched)
        if reference is not None:
            axes.axhline(reference, linestyle="--", color="gray", linewidth=1, label="dense")
        ceiling = max([r[key] for r in (dense or rows)] + [reference or 0, 1])
        axes.set_ylim(0, 1.1 * ceiling)  # all-zero rows (every block cut) still get a scale
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        axes.grid(True, axis="y", alpha=0.3)
    top.set_ylabel("heads kept")
    bottom.set_ylabel("channels kept")
    bottom.set_xlabel("layer")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_title(title or "Structure of the pruned model")
    return figure


def _perplexity_lines(series: dict[str, list[dict]], path: Path, x, label, xlabel: str,
                      ylabel: str, title: str, formatter=None) -> Path:
    """Perplexity (log scale) against ``x(point)``, one marked line per series, each point
    annotated with ``label(point)``: the shape of the Pareto and the per-byte plots."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    values = []
    for (name, points), marker in zip(series.items(), "osD^v<>", strict=False):
        points = sorted((p for p in points if p.get("perplexity") is not None), key=x)
        if not points:
            continue
        values += [p["perplexity"] for p in points]
        axes.plot([x(p) for p in points], [p["perplexity"] for p in points], marker=marker,
                  label=name)
        for p in points:
            axes.annotate(label(p), (x(p), p["perplexity"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    _log_perplexity_axis(axes, values)
    if formatter is not None:
        axes.xaxis.set_major_formatter(formatter)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(title)
    return _save(figure, path)


def pareto(series: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Calibration perplexity (log scale) against parameters kept, one line per series (a
    sweep's plans and its references); points are ``{"params": n, "perplexity": p,
    "budget": b}``, each labelled with its budget."""
    return _perplexity_lines(series, path, lambda p: p["params"], lambda p: f"{p['budget']:g}",
                             "parameters kept", "calibration perplexity",
                             title or "Calibration perplexity vs parameters",
                             EngFormatter())  # 1.2M, not 1200000 or an offset


def _log_perplexity_axis(axes, values: list[float]) -> None:
    """Log scale with plain numbers; under one decade the minor ticks are labelled too, so a
    narrow range still reads."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    if values and max(values) < 10 * min(values):
        axes.yaxis.set_minor_formatter(ScalarFormatter())


def projects_plot(points: list[dict], path: Path, dataset: str) -> Path:
    """``compare --plot``: perplexity (log scale) of each project's best model against the share
    of parameters kept; the dense model at 100 % is the reference (one point per distinct dense
    perplexity, with a dashed line), the winner is a star.  Points are ``{"label", "kept",
    "perplexity", "winner", "dense"}``."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for p in points:
        axes.scatter(100 * p["kept"], p["perplexity"], s=160 if p["winner"] else 50,
                     marker="*" if p["winner"] else "o", zorder=3,
                     color="tab:red" if p["winner"] else "tab:blue")
        axes.annotate(p["label"] + (" — winner" if p["winner"] else ""),
                      (100 * p["kept"], p["perplexity"]), fontsize=8,
                      textcoords="offset points", xytext=(5, 4))
    dense = sorted({p["dense"] for p in points if p.get("dense") is not None})
    for value in dense:
        axes.axhline(value, linestyle="--", color="gray", linewidth=1)
        axes.scatter(100, value, marker="s", color="gray", zorder=3)
    if dense:
        axes.annotate(f"dense {dense[0]:.2f}", (100, dense[0]), fontsize=8,
                      textcoords="offset points", xytext=(-60, -12))
    values = [p["perplexity"] for p in points] + dense
    _log_perplexity_axis(axes, values)
    kept = [100 * p["kept"] for p in points] + [100]
    axes.set_xlim(min(kept) - 0.1 * (103 - min(kept)) - 1, 103)
    axes.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.set_xlabel("parameters kept (share of the dense model)")
    axes.set_ylabel(f"perplexity ({dataset})")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title("Perplexity vs parameters kept, best model of each project")
    return _save(figure, path)


def perplexity_per_byte(series: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Perplexity (log scale) against GGUF file size, one line per model (dense, pruned,
    recovered), each point labelled with its tensor type: where pruning beats quantizing further
    at a size budget.  Points are ``{"bytes": n, "perplexity": p, "label": type}``."""
    return _perplexity_lines(series, path, lambda p: p["bytes"] / 2**20, lambda p: p["label"],
                             "GGUF file size (MiB)", "perplexity in llama.cpp",
                             title or "Perplexity vs file size")
