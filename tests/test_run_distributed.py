"""``prunectl run`` end to end under torchrun (2 gloo processes, a tiny Llama): every step of
the block, FLAP and Taylor + LoRA-recovery pipelines finishes, the group is torn down cleanly,
and the results equal one process's.

Before, rank 1 read ``state.json`` while rank 0 was still recording ``apply``, so it evaluated
the dense model only and waited at a barrier while rank 0 sat in the pruned model's
all-reduce: ``run`` hung at ``eval`` until the collective timeout.  Now every decision that reads
project state is taken by rank 0 and broadcast (``Distributed.decide``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import save_tiny
from typer.testing import CliRunner

from prunectl.cli import app

LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")

METHODS = {
    "block": ({"name": "block", "block_type": "mix", "batch_size": 2}, {"blocks": 3}, None),
    "flap": ({"name": "flap", "metric": "WIFV", "structure": "AL-AM"}, {"params_ratio": 0.2},
             None),
    "taylor": ({"name": "taylor", "layer_start": 1, "layer_end": 3}, {"params_ratio": 0.2},
               {"format": "text", "cutoff_len": 32, "batch_size": 8, "micro_batch_size": 2,
                "max_steps": 4, "save_steps": 2, "val_set_size": 4, "learning_rate": 5e-3,
                "lora_dropout": 0.0, "max_samples": 40}),
    "puzzle": ({"name": "puzzle", "mlp_widths": [0.5], "verify": 2, "reconstruct_damp": 1.0},
               {"params_ratio": 0.2, "kv_cache_ratio": 0.3}, None),
}


def pipeline_recipe(path: Path, model_dir: Path, text: Path, method: str) -> Path:
    """A whole pipeline on a tiny model: calibration, pruning, maybe recovery, perplexity of
    every model, export."""
    section, target, recover = METHODS[method]
    recipe = {
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 5, "seqlen": 24, "seed": 1,
                        "batch_size": 2},
        "method": section,
        "target": target,
        "eval": {"perplexity": {"datasets": [str(text)], "seqlen": 24, "max_windows": 5,
                                "batch_size": 2}},
        "export": {"dtype": "float32"},
    }
    if recover is not None:
        recipe["recover"] = {"dataset": str(text), **recover}
    path.write_text(yaml.safe_dump(recipe))
    return path


def torchrun(*args: str, **extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "--no-python", str(Path(sys.executable).with_name("prunectl")), *map(str, args)]


def launch_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {
        "OMP_NUM_THREADS": "1", "PRUNECTL_DIST_TIMEOUT": "120", **extra}


def figures(project: Path) -> dict:
    """Each step's status and the evaluation figures ``state.json`` records."""
    steps = json.loads((project / "state.json").read_text())["steps"]
    return {name: record["status"] for name, record in steps.items()}, steps["eval"]["summary"]


@pytest.mark.slow  # two torchrun processes through a whole pipeline
@pytest.mark.parametrize("method", list(METHODS))
def test_torchrun_run_finishes_every_step_like_one_process(tmp_path, text_file, method):
    model_dir = save_tiny(tmp_path / "tiny", "llama")
    recipe = pipeline_recipe(tmp_path / "recipe.yaml", model_dir, text_file, method)

    launched = subprocess.run(torchrun("run", "-p", tmp_path / "multi", "-r", recipe, "--quiet"),
                              capture_output=True, text=True, env=launch_env(), timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "Traceback" not in launched.stderr and "terminate called" not in launched.stderr

    alone = CliRunner().invoke(app, ["run", "-p", str(tmp_path / "single"), "-r", str(recipe),
                                     "--quiet"])
    assert alone.exit_code == 0, alone.output
    statuses, multi = figures(tmp_path / "multi")
    expected = {"calibrate": "done", "score": "done", "search": "done", "apply": "done",
                "recover": "skipped" if METHODS[method][2] is None else "done",
                "eval": "done", "export": "done"}
    assert statuses == expected
    single_statuses, single = figures(tmp_path / "single")
    assert single_statuses == expected
    roles = {"dense", "pruned"} | ({"recovered"} if METHODS[method][2] else set())
    assert set(multi) == roles == set(single)
    for role in roles:
        (name, value), = multi[role].items()
        assert value == pytest.approx(single[role][name], rel=1e-4), role
    multi_plan, single_plan = (json.loads((tmp_path / run / "search" / "plan.json").read_text())
                               for run in ("multi", "single"))
    assert multi_plan["removal_order"] == single_plan["removal_order"]
    assert multi_plan["layers"] == single_plan["layers"]
