"""`prunectl eval` under torchrun: lm-eval's own data parallelism on the models in memory.

One project (a dense tiny Llama and a non-uniform pruned one) is copied; one copy is evaluated
in one process, the other by two gloo ranks.  Both must save the same task records, each rank
must have run only its strided share of the documents, and rank 1 must write nothing: an audit
hook (``sitecustomize``) logs every file each rank opens for writing, renames or removes under
the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import save_tiny
from typer.testing import CliRunner

from prunectl.cli import app

WORLD = 2
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}

#: seven questions with 2-4 choices: uneven shares (docs 0,2,4,6 and 1,3,5), lm-eval pads rank 1
MC_ROWS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["three", "four", "five"], "answer": 1},
    {"question": "Water freezes at zero degrees", "choices": ["Celsius", "Kelvin"], "answer": 0},
    {"question": "A week has", "choices": ["five days", "six days", "seven days", "ten"],
     "answer": 2},
    {"question": "The opposite of hot is", "choices": ["warm", "cold", "red"], "answer": 1},
    {"question": "Fish live in", "choices": ["water", "trees"], "answer": 0},
    {"question": "The sun rises in the", "choices": ["north", "east", "south"], "answer": 1},
]
#: one question: fewer documents than ranks, so rank 0 evaluates it alone
ONE_ROWS = [{"question": "Snow is", "choices": ["white", "black", "green"], "answer": 0}]

WATCH = textwrap.dedent("""
    import os, sys

    _root, _log = os.environ["WATCH_ROOT"], os.environ["WATCH_LOG"] + "." + os.environ["RANK"]
    _written = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            paths = [args[0]] if (mode and set(mode) & set("wax+")) or flags & _written else []
        elif event in ("os.rename", "os.remove", "os.mkdir"):
            paths = args[:2] if event == "os.rename" else args[:1]
        else:
            return
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_root):
                with open(_log, "a") as log:
                    log.write(f"{event} {os.fspath(path)}\\n")

    sys.addaudithook(_hook)
""")


def _task(directory: Path, name: str, rows: list[dict]) -> None:
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }))


def _share(rows: list[dict], rank: int) -> int:
    """Requests of ``rank``'s strided share of the documents: one per choice."""
    return sum(len(row["choices"]) for row in rows[rank::WORLD])


def _files(root: Path) -> list[str]:
    """The files under ``root``; the token caches' names hash the tokenizer's path (which names
    the project directory), so only their number is compared."""
    names = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return sorted(re.sub(r"-[0-9a-f]{16}\.safetensors$", "", name) for name in names)


@pytest.fixture
def projects(tmp_path, text_file, monkeypatch):
    """A finished `apply` in ``single/``, copied to ``multi/``; the recipe path."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _task(tasks, "dp_mc", MC_ROWS)
    _task(tasks, "dp_one", ONE_ROWS)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(save_tiny(tmp_path / "tiny")), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 24},
        "method": {"name": "manual", "remove": ["layers.0.attn", "layers.2.mlp"]},
        "eval": {
            "perplexity": {"datasets": [str(text_file)], "seqlen": 32, "max_windows": 3},
            "tasks": ["dp_mc", "dp_one"],
            "task_paths": [str(tasks)],
            "task_batch_size": 2,
        },
    }))
    single = tmp_path / "single"
    for step in ("calibrate", "score", "search", "apply"):
        done = CliRunner().invoke(app, [step, "-p", str(single), "-r", str(recipe), "--quiet"])
        assert done.exit_code == 0, done.output
    shutil.copytree(single, tmp_path / "multi")
    return single, tmp_path / "multi", recipe


@pytest.mark.slow  # spawns processes
def test_torchrun_eval_splits_tasks_and_equals_one_process(projects, tmp_path):
    single, multi, recipe = projects
    alone = CliRunner().invoke(app, ["eval", "-p", str(single), "-r", str(recipe), "--quiet"])
    assert alone.exit_code == 0, alone.output

    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "sitecustomize.py").write_text(WATCH)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | OFFLINE | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "watch"),
                                                    os.environ.get("PYTHONPATH")])),
        "WATCH_ROOT": str(multi),
        "WATCH_LOG": str(tmp_path / "writes"),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(WORLD), "--no-python",
                str(Path(sys.executable).with_name("prunectl"))]
    done = subprocess.run([*launcher, "eval", "-p", str(multi), "-r", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0's log lines: the per-rank request counts lm-eval gave the model
    shares = [_share(MC_ROWS, rank) for rank in range(WORLD)]
    assert f"pruned: dp_mc ran {sum(shares)} requests, per rank {shares}" in done.stderr
    assert "pruned: dp_one has fewer documents than ranks, rank 0 runs it" in done.stderr

    for role in ("dense", "pruned"):
        for task, rows, expected in (
            ("dp_mc", MC_ROWS, shares),
            ("dp_one", ONE_ROWS, [len(ONE_ROWS[0]["choices"])]),
        ):
            one = json.loads((single / "eval" / role / "tasks" / f"{task}.json").read_text())
            two = json.loads((multi / "eval" / role / "tasks" / f"{task}.json").read_text())
            assert one["requests_per_rank"] == [sum(len(r["choices"]) for r in rows)]
            assert two["requests_per_rank"] == expected
            # accuracies are means of per-document 0/1 hits, gathered from both ranks: exact.
            # Their stderr is a sample standard deviation of those hits, whose float rounding
            # depends on the order rank 0 concatenates them in: equal to 1e-12.
            assert two["metrics"] == one["metrics"]
            assert two["stderr"] == pytest.approx(one["stderr"], rel=1e-12, abs=0)
            volatile = {"date", "duration_s", "requests_per_rank", "stderr", "acc_stderr",
                        "acc_norm_stderr"}
            assert {k: v for k, v in two.items() if k not in volatile} == {
                k: v for k, v in one.items() if k not in volatile}
    mc = json.loads((single / "eval" / "dense" / "tasks" / "dp_mc.json").read_text())
    assert 0 < mc["acc"] < 1  # a lost share would change the mean and its stderr
    state = json.loads((multi / "state.json").read_text())
    assert state["steps"]["eval"]["summary"]["pruned"]["dp_mc"] == json.loads(
        (multi / "eval" / "pruned" / "tasks" / "dp_mc.json").read_text())["score"]

    # one set of result files: the same files as one process, written by rank 0 alone
    assert _files(multi / "eval") == _files(single / "eval")
    assert not (tmp_path / "writes.1").exists()
    written = (tmp_path / "writes.0").read_text()
    for role in ("dense", "pruned"):
        assert f"os.rename {multi / 'eval' / role / 'tasks' / 'dp_mc.json'}\n" in written
