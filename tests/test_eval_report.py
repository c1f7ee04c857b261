"""The report: PNGs that are real images, the curve and table data in report.md and summary.json,
and a report of whatever exists when parts of the pipeline have not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from prunectl.evaluation.report import summary_table_markdown, write_report
from prunectl.methods.plan import plan_from_removals

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORDER = ["layers.2.mlp", "layers.1.attn", "layers.2.attn", "layers.3.mlp"]
CURVE = [
    {"blocks": 0, "perplexity": 20.5, "params_removed": 0, "params_ratio": 0.0},
    {"blocks": 1, "perplexity": 21.25, "params_removed": 100, "params_ratio": 0.1},
    {"blocks": 2, "perplexity": 23.875, "params_removed": 150, "params_ratio": 0.15},
    {"blocks": 3, "perplexity": 31.0625, "params_removed": 250, "params_ratio": 0.25},
    {"blocks": 4, "perplexity": 58.5, "params_removed": 350, "params_ratio": 0.35},
]


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _task(task: str, acc: float, acc_norm: float, metric: str) -> dict:
    return {"task": task, "acc": acc, "acc_norm": acc_norm, "average_metric": metric,
            "score": acc if metric == "acc" else acc_norm, "num_fewshot": 0, "limit": None}


def _speed(prefill: float, decode: float, peak: int, total: int) -> dict:
    return {
        "device": {"type": "cpu", "name": "test-cpu"}, "dtype": "float32",
        "prefill": [{"seq_len": 128, "batch": 1, "tokens_per_s": prefill / 2},
                    {"seq_len": 512, "batch": 1, "tokens_per_s": prefill}],
        "decode": [{"batch": 1, "tokens_per_s": decode}],
        "memory": {"peak_bytes": peak, "source": "cpu_peak_rss"},
        "parameters": {"total": total, "non_embedding": total - 50},
    }


@pytest.fixture
def project(tmp_path) -> Path:
    """A project with the files the pipeline writes: plan, pruned model info, eval results."""
    root = tmp_path / "proj"
    (root).mkdir()
    (root / "recipe.yaml").write_text("model: {path: tiny/llama}\nmethod: {name: block}\n")
    applied = plan_from_removals("block", ORDER[:3], 4, removal_order=ORDER, curve=CURVE)
    _write(root / "search" / "plan.json", {**applied.model_dump(mode="json"), "achieved": {"blocks": 3}})
    per_layer = [
        {"layer": i, "attention": i not in (1, 2), "mlp": i != 2,
         "heads": 0 if i in (1, 2) else 4, "kv_heads": 0 if i in (1, 2) else 2,
         "intermediate": 0 if i == 2 else 96}
        for i in range(4)
    ]
    _write(root / "pruned" / "prunectl.json", {
        "dense": {"total": 1000, "non_embedding": 950}, "pruned": {"total": 750, "non_embedding": 700},
        "per_layer": per_layer, "plan": applied.model_dump(mode="json"), "blocks_removed": 3})
    for model, ppl, boolq, hella in (("dense", 20.5, 0.6, 0.4), ("pruned", 31.0625, 0.55, 0.3),
                                     ("recovered", 25.25, 0.58, 0.35)):
        _write(root / "eval" / model / "perplexity-wikitext2.json", {"perplexity": ppl, "dataset": "wikitext2"})
        _write(root / "eval" / model / "tasks" / "boolq.json", _task("boolq", boolq, 0.0, "acc"))
        _write(root / "eval" / model / "tasks" / "hellaswag.json", _task("hellaswag", 0.1, hella, "acc_norm"))
    _write(root / "eval" / "dense" / "speed.json", _speed(1000.0, 50.0, 4 * 2**30, 1000))
    _write(root / "eval" / "pruned" / "speed.json", _speed(1400.0, 70.0, 3 * 2**30, 750))
    return root


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
    assert rows["task_average"] == pytest.approx({"dense": 0.5, "pruned": 0.425, "recovered": 0.465})
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
    _write(tmp_path / "search" / "plan.json", plan.model_dump(mode="json"))
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
