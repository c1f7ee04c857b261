"""The report: PNGs that are real images, the curve and table data in report.md and summary.json,
and a report of whatever exists when parts of the pipeline have not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.eval_project import CURVE, ORDER, make_project, write
from matplotlib.image import imread

from prunectl.evaluation.report import summary_table_markdown, write_report
from prunectl.methods.plan import plan_from_removals

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
