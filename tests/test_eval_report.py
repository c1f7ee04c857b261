"""The report: PNGs that are real images, the curve and table data in report.md and summary.json,
and a report of whatever exists when parts of the pipeline have not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.eval_project import CURVE, ORDER, make_project, write
from matplotlib.image import imread

from prunectl.evaluation.report import summary_table_markdown, write_report
from prunectl.plan import plan_from_removals

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "proj")


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400


def test_report_plots_and_tables(project):
    report = write_report(project)
    assert report == project / "eval" / "report.md"
    _assert_png(project / "eval" / "perplexity_vs_blocks.png")
    _assert_png(project / "eval" / "pruned_structure.png")
    text = report.read_text()
    assert "![perplexity vs blocks removed](perplexity_vs_blocks.png)" in text
    # every curve point, with the block removed at that step; the applied count is marked
    assert "| 1 | layers.2.mlp | 21.250 | 10.00% |" in text
    assert "| 3 ← | layers.2.attn | 31.062 | 25.00% |" in text
    assert "| 4 | layers.3.mlp | 58.500 | 35.00% |" in text
    assert "| 2 | removed | 0 | 0 | removed | 0 |" in text
    assert "| 0 | kept | 4 | 2 | kept | 96 |" in text

    summary = json.loads((project / "eval" / "summary.json").read_text())
    assert summary["models"] == ["dense", "pruned", "recovered"]
    assert summary["curve"] == CURVE and summary["chosen_blocks"] == 3
    rows = {row["key"]: row["values"] for row in summary["rows"]}
    assert rows["ppl_wikitext2"] == {"dense": 20.5, "pruned": 31.0625, "recovered": 25.25}
    assert rows["hellaswag"] == {"dense": 0.4, "pruned": 0.3, "recovered": 0.35}  # acc_norm
    assert rows["task_average"] == pytest.approx(
        {"dense": 0.5, "pruned": 0.425, "recovered": 0.465}
    )
    assert rows["params"] == {"dense": 1000, "pruned": 750, "recovered": 750}
    assert rows["prefill_512"] == {"dense": 1000.0, "pruned": 1400.0}
    assert rows["decode_b1"] == {"dense": 50.0, "pruned": 70.0}

    table = summary_table_markdown(project)
    assert table.splitlines()[0] == "| metric | dense | pruned | recovered |"
    assert "| perplexity (wikitext2) | 20.50 | 31.06 | 25.25 |" in table
    assert "| task average (2 tasks) | 50.00 | 42.50 | 46.50 |" in table
    assert "| prefill tokens/s (seq 512) | 1,000.0 | 1,400.0 (×1.40) | – |" in table
    assert "| parameters | 1,000 | 750 (75.0%) | 750 (75.0%) |" in table
    assert table in text


def test_report_of_a_project_that_only_searched(tmp_path):
    plan = plan_from_removals("block", ORDER[:2], 4, removal_order=ORDER, curve=CURVE)
    write(tmp_path / "search" / "plan.json", plan.model_dump(mode="json"))
    text = write_report(tmp_path).read_text()
    _assert_png(tmp_path / "eval" / "perplexity_vs_blocks.png")
    assert "| 4 | layers.3.mlp | 58.500 | 35.00% |" in text
    assert "No evaluation results yet" in text
    assert not (tmp_path / "eval" / "pruned_structure.png").exists()
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["rows"] == []


def test_report_of_an_empty_project(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "No evaluation results yet" in text
    assert summary_table_markdown(tmp_path).startswith("No evaluation results yet")


def test_structure_plot_keeps_the_dense_reference_when_every_layer_was_cut(tmp_path):
    """Every layer lost heads and channels: no layer is untouched, so the reference comes from
    the dense rows apply records, and the axes still reach the dense counts."""
    from prunectl.evaluation.plots import structure_figure

    dense = [{"layer": i, "attention": True, "mlp": True, "heads": 4, "kv_heads": 2,
              "intermediate": 96} for i in range(3)]
    cut = [{**r, "heads": 2, "kv_heads": 1, "intermediate": 40} for r in dense]
    cut[1].update(attention=False, heads=0, kv_heads=0)
    figure = structure_figure(cut, untouched=set(), dense=dense)
    top, bottom = figure.axes[:2]
    for axes, expected in ((top, 4), (bottom, 96)):
        labels = axes.get_legend_handles_labels()[1]
        assert "dense" in labels
        assert axes.get_ylim()[1] >= expected
        heights = sorted({round(bar.get_height()) for bar in axes.patches if not bar.get_fill()})
        assert heights == [expected]  # the outlined dense bars, one per layer
    everything_gone = [{**r, "attention": False, "mlp": False, "heads": 0, "kv_heads": 0,
                        "intermediate": 0} for r in dense]
    top = structure_figure(everything_gone, untouched=set(), dense=dense).axes[0]
    assert top.get_ylim() == pytest.approx((0, 4.4))  # a scale, not a flat 0..1 axis


def test_report_includes_the_sweep_pareto_plot(project):
    from prunectl.evaluation.plots import pareto

    series = {"puzzle": [{"budget": 0.8, "params": 800, "perplexity": 30.5},
                         {"budget": 0.6, "params": 600, "perplexity": 41.25}]}
    write(project / "search" / "pareto.json", series)
    pareto(series, project / "search" / "pareto.png")
    text = write_report(project).read_text()
    assert "![pareto](pareto.png)" in text and "| puzzle | 0.6 | 600 | 41.250 |" in text
    assert (project / "eval" / "pareto.png").read_bytes() == \
        (project / "search" / "pareto.png").read_bytes()
    summary = json.loads((project / "eval" / "summary.json").read_text())
    assert summary["plots"] == ["perplexity_vs_blocks.png", "pruned_structure.png", "pareto.png"]
