"""`prunectl search --method block` killed with SIGKILL mid-search resumes to the same order,
keeping every recorded decision instead of recomputing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import save_tiny, write_recipe

#: loaded at interpreter start (PYTHONPATH): SIGKILLs the process right after the progress
#: file reaches KILL_AFTER lines, i.e. after that decision was made and fsynced
KILLER = textwrap.dedent("""
    import os, signal
    from pathlib import Path
    import prunectl.io as io

    _append = io.append_jsonl

    def append_jsonl(path, obj):
        _append(path, obj)
        lines = Path(path).read_text().splitlines()
        if Path(path).name == "progress.jsonl" and len(lines) >= int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)

    io.append_jsonl = append_jsonl
""")


def prunectl(*args, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from prunectl.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def block_recipe(path: Path, model_dir: Path, text: Path) -> Path:
    """The block search these tests interrupt (also run under torchrun by test_distributed)."""
    return write_recipe(path, model_dir, text, calibration={"seqlen": 24}, target={"blocks": 5},
                        method={"name": "block", "block_type": "mix", "batch_size": 2})


def progress(project: Path) -> list[str]:
    return (project / "search" / "progress.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_sigkilled_search_resumes_without_recomputing(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "tiny", "llama", num_hidden_layers=4)
    recipe = block_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    (tmp_path / "killer").mkdir()
    (tmp_path / "killer" / "sitecustomize.py").write_text(KILLER)
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path / "killer"),
                                               os.environ.get("PYTHONPATH")]))
    killed_env = {**os.environ, "PYTHONPATH": pythonpath, "KILL_AFTER": "3"}

    project = tmp_path / "killed"
    killed = prunectl("search", "-p", project, "-r", recipe, "--quiet", env=killed_env)
    assert killed.returncode == -9, killed.stderr
    recorded = progress(project)
    assert [json.loads(line)["step"] for line in recorded] == [1, 2, 3]

    resumed = prunectl("search", "-p", project, "--json", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    statuses = {s["step"]: s["status"] for s in json.loads(resumed.stdout)["steps"]}
    assert statuses["score"] == "up-to-date" and statuses["search"] == "done"
    lines = progress(project)
    assert lines[:3] == recorded  # byte for byte: kept, not recomputed or rewritten
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]

    fresh = tmp_path / "fresh"
    assert prunectl("search", "-p", fresh, "-r", recipe, "--quiet").returncode == 0
    plan = json.loads((project / "search" / "plan.json").read_text())
    fresh_plan = json.loads((fresh / "search" / "plan.json").read_text())
    assert plan["removal_order"] == fresh_plan["removal_order"]
    assert [json.loads(line)["removed"] for line in lines] == plan["removal_order"]
    assert [p["perplexity"] for p in plan["curve"]] == pytest.approx(
        [p["perplexity"] for p in fresh_plan["curve"]], rel=1e-9)
