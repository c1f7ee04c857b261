"""lm-eval zero-shot tasks on a tiny random model through a local task YAML (no downloads)."""

from __future__ import annotations

import json

import pytest
from helpers import byte_tokenizer, tiny_model
from fixtures.tiny_task import TASK, TASKS_DIR, direct_accuracy

from prunectl.errors import UserError
from prunectl.evaluation.tasks import PAPER_METRIC, PAPER_TASKS, average_metric, run_tasks
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.surgery import apply_plan


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(model, out_dir, tasks=(TASK,), fingerprint="fp-1", limit=None):
    return run_tasks(
        model,
        byte_tokenizer(),
        list(tasks),
        task_paths=[str(TASKS_DIR)],
        num_fewshot=0,
        limit=limit,
        batch_size=2,
        out_dir=out_dir,
        model_label="dense",
        dtype="float32",
        model_fingerprint=fingerprint,
    )


def test_accuracy_matches_direct_loglikelihood_scoring(tmp_path):
    model = tiny_model("llama")
    figures = _run(model, tmp_path)

    saved = json.loads((tmp_path / f"{TASK}.json").read_text())
    acc, acc_norm = direct_accuracy(model, byte_tokenizer())
    assert saved["acc"] == pytest.approx(acc)
    assert saved["acc_norm"] == pytest.approx(acc_norm)
    assert saved["acc_stderr"] is not None and saved["acc_norm_stderr"] is not None
    assert saved["n_samples"] == {"original": 4, "effective": 4}
    assert saved["average_metric"] == "acc" and saved["score"] == saved["acc"]
    assert (saved["num_fewshot"], saved["limit"], saved["batch_size"]) == (0, None, 2)
    assert (saved["dtype"], saved["model"], saved["model_fingerprint"]) == (
        "float32",
        "dense",
        "fp-1",
    )
    import lm_eval

    assert saved["lm_eval_version"] == lm_eval.__version__
    assert figures == {TASK: saved["acc"], "task_average": pytest.approx(saved["acc"])}


def test_non_uniform_pruned_model(tmp_path):
    """Our own pruned class (a removed attention block, fewer heads and channels elsewhere) runs
    through lm-eval like a stock model."""
    plan = Plan(
        method="manual",
        layers={
            1: LayerPlan(attention=False),
            2: LayerPlan(q_heads=[0, 2], kv_heads=[0, 1], mlp_channels=list(range(40))),
        },
    )
    pruned = apply_plan(tiny_model("llama", seed=1), plan)
    assert type(pruned).__name__ == "PrunedLlamaForCausalLM"
    _run(pruned, tmp_path)
    saved = json.loads((tmp_path / f"{TASK}.json").read_text())
    assert (saved["acc"], saved["acc_norm"]) == pytest.approx(
        direct_accuracy(pruned, byte_tokenizer())
    )


def test_finished_task_is_not_run_again(tmp_path, monkeypatch):
    model = tiny_model("llama")
    first = _run(model, tmp_path, limit=3)
    before = (tmp_path / f"{TASK}.json").read_text()

    import lm_eval.evaluator

    class Ran(Exception):
        pass

    def must_not_run(*args, **kwargs):
        raise Ran

    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", must_not_run)
    assert _run(model, tmp_path, limit=3) == first
    assert (tmp_path / f"{TASK}.json").read_text() == before
    with pytest.raises(Ran):  # another model or limit is evaluated afresh
        _run(model, tmp_path, limit=3, fingerprint="fp-2")
    with pytest.raises(Ran):
        _run(model, tmp_path, limit=2)


def test_unloadable_task_is_named_and_finished_tasks_are_kept(tmp_path):
    with pytest.raises(UserError, match="'prunectl_tiny_unreachable' could not be loaded"):
        _run(tiny_model("llama"), tmp_path, tasks=("prunectl_tiny_unreachable", TASK))
    assert json.loads((tmp_path / f"{TASK}.json").read_text())["acc"] is not None
    assert not (tmp_path / "prunectl_tiny_unreachable.json").exists()


@pytest.mark.slow  # indexes lm-eval's ~15k built-in tasks to know the name is unknown
def test_unknown_task_suggests_the_closest_name(tmp_path):
    with pytest.raises(
        UserError,
        match=r"unknown lm-eval task 'prunectl_tiny_mcq' \(did you mean 'prunectl_tiny_mc'",
    ):
        _run(tiny_model("llama"), tmp_path, tasks=(TASK, "prunectl_tiny_mcq"))
    assert (tmp_path / f"{TASK}.json").exists()


def test_paper_metric_choice():
    assert PAPER_TASKS == [
        "boolq",
        "piqa",
        "hellaswag",
        "winogrande",
        "arc_easy",
        "arc_challenge",
        "openbookqa",
    ]
    both = {"acc": 0.5, "acc_norm": 0.6}
    chosen = {t: average_metric(t, both) for t in PAPER_TASKS}
    assert [t for t, m in chosen.items() if m == "acc_norm"] == sorted(
        PAPER_METRIC, key=PAPER_TASKS.index
    )
    assert average_metric("hellaswag", {"acc": 0.5}) == "acc"  # falls back to what exists
