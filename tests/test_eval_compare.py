"""compare: one row per project from its files, with figures checked against what was written."""

from __future__ import annotations

import pytest
from fixtures.eval_project import FIGURES, make_project
from rich.console import Console

from prunectl.errors import UserError
from prunectl.evaluation.compare import compare_projects, compare_table


def test_one_row_per_project(tmp_path):
    finished = make_project(tmp_path / "a")
    unrecovered = make_project(tmp_path / "b", models=("dense", "pruned"), method="shortgpt")
    rows = compare_projects([finished, unrecovered])

    a, b = rows
    assert (a["project"], a["method"], a["target"], a["model"]) == (
        str(finished),
        "block",
        "blocks=3",
        "recovered",
    )
    assert a["params_kept"] == 0.75 and a["blocks_removed"] == 3
    ppl, boolq, hella = FIGURES["recovered"]
    assert a["ppl_wikitext2"] == ppl
    assert a["task_average"] == pytest.approx((boolq + hella) / 2) and a["tasks"] == 2
    assert "speedup_decode" not in a  # the recovered model's speed was not measured

    assert (b["method"], b["model"]) == ("shortgpt", "pruned")
    ppl, boolq, hella = FIGURES["pruned"]
    assert b["ppl_wikitext2"] == ppl and b["task_average"] == pytest.approx((boolq + hella) / 2)
    assert b["speedup_prefill"] == pytest.approx(1.4) and b["speedup_decode"] == pytest.approx(1.4)

    console = Console(width=250, record=True)
    console.print(compare_table(rows))
    text = console.export_text()
    assert "shortgpt" in text and "×1.40" in text and "75.00%" in text and "46.50%" in text


def test_not_a_project_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path} is not a prunectl project"):
        compare_projects([tmp_path])
