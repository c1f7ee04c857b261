"""compare: one row per project from its files, with figures checked against what was written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.eval_project import FIGURES, make_project
from matplotlib.image import imread
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


def test_ranked_by_the_best_model_with_a_winner_and_a_plot(tmp_path):
    """a: recovered beats pruned; b: pruned only, beaten by a at the same size; c: its recovery
    made it worse, so its pruned model counts, and it keeps fewer parameters than a and b
    (higher perplexity than a: not dominated)."""
    from fixtures.eval_project import write
    from typer.testing import CliRunner

    from prunectl.cli import app

    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b", models=("dense", "pruned"))
    c = make_project(tmp_path / "c")
    write(c / "eval" / "pruned" / "perplexity-wikitext2.json", {"perplexity": 30.0})
    write(c / "eval" / "recovered" / "perplexity-wikitext2.json", {"perplexity": 40.0})
    info = json.loads((c / "pruned" / "prunectl.json").read_text())
    info["pruned"]["total"] = 700
    write(c / "pruned" / "prunectl.json", info)
    empty = tmp_path / "d"
    empty.mkdir()
    (empty / "recipe.yaml").write_text("model: {path: x/y}\nmethod: {name: flap}\n")

    rows = compare_projects([b, c, a, empty])
    by_name = {Path(r["project"]).name: r for r in rows}
    assert [(n, by_name[n]["rank"], by_name[n]["model"]) for n in "abcd"] == [
        ("a", 1, "recovered"), ("b", 3, "pruned"), ("c", 2, "pruned"), ("d", None, None)]
    assert by_name["a"]["winner"] and not any(by_name[n]["winner"] for n in "bcd")
    assert by_name["c"]["ppl_wikitext2"] == 30.0 and by_name["c"]["params_kept"] == 0.7
    assert by_name["b"]["dominated_by"] == str(a)  # the best-ranked project beating it
    assert by_name["a"]["dominated_by"] is None and by_name["c"]["dominated_by"] is None
    assert by_name["a"]["ranked_by"] == "wikitext2" and by_name["a"]["dense_ppl"] == 20.5
    assert "best model" in rows[0]["rule"] and "wikitext2" in rows[0]["rule"]

    console = Console(width=250, record=True)
    console.print(compare_table(rows))
    text = console.export_text()
    assert "★ a (winner)" in text and "Rank: ranked by perplexity on wikitext2" in text
    assert "unranked" in text and "dominated by" in text

    for project in (a, b, c):
        (project / "state.json").write_text("{}")
    plot = tmp_path / "compare.png"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), str(c), "--json",
                                      "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert [r["rank"] for r in json.loads(result.stdout)] == [1, 3, 2]
    image = imread(plot)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
