"""Taylor pruning then LoRA recovery through the CLI, and a recovery killed with SIGKILL resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import invoke, save_tiny, write_recipe

from prunectl.modeling.loading import load_project_model


def taylor_recipe(path: Path, model_dir: Path, text: Path, max_steps: int | None,
                  **recover) -> Path:
    """Taylor pruning then a short recovery on ``text`` (``recover`` keys override)."""
    return write_recipe(
        path, model_dir, text,
        method={"name": "taylor", "layer_start": 1, "layer_end": 3},
        target={"params_ratio": 0.2},
        recover={"dataset": str(text), "format": "text", "cutoff_len": 32, "batch_size": 8,
                 "micro_batch_size": 8, "max_steps": max_steps, "save_steps": 2,
                 "val_set_size": 4, "learning_rate": 5e-3, **recover},
        eval={"perplexity": {"datasets": [str(text)], "seqlen": 32, "max_windows": 2}},
        export={"dtype": "float32"})


def pruned_project(tmp_path: Path, text: Path, max_steps: int | None, **recover) -> Path:
    """A project pruned by taylor through the CLI, ready for ``recover`` (recipe keys from
    ``recover`` override the small defaults above)."""
    model_dir = save_tiny(tmp_path / "tiny", "llama")
    recipe = taylor_recipe(tmp_path / "recipe.yaml", model_dir, text, max_steps, **recover)
    project = tmp_path / "proj"
    for step in ("calibrate", "score", "search", "apply"):
        result = invoke(step, "-p", project, "-r", recipe, "--quiet")
        assert result.exit_code == 0, result.output
    return project


def recover_record(project: Path) -> dict:
    return json.loads((project / "state.json").read_text())["steps"]["recover"]


def test_taylor_prune_then_recover_through_the_cli(tmp_path, text_file, monkeypatch):
    project = pruned_project(tmp_path, text_file, max_steps=3)
    plan = json.loads((project / "search" / "plan.json").read_text())
    assert plan["method"] == "taylor" and plan["achieved"]["ratio_estimate"] > 0.1

    monkeypatch.chdir(tmp_path)  # a relative -p, as people type it
    result = invoke("recover", "-p", "proj", "--max-steps", "6", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    record = recover_record(project)
    assert record["status"] == "done"
    summary = record["summary"]
    assert summary["steps"] == 6 and summary["eval_loss_after"] < summary["eval_loss_before"]
    model = load_project_model(project / "recovered" / "model", torch.device("cpu"), torch.float32)
    pruned = load_project_model(project / "pruned", torch.device("cpu"), torch.float32)
    assert [p.shape for p in model.parameters()] == [p.shape for p in pruned.parameters()]
    assert (project / "recovered" / "adapter" / "adapter_model.safetensors").is_file()

    # the adapter loads by itself from any other working directory, onto the pruned model
    from peft import AutoPeftModelForCausalLM

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    adapter = project / "recovered" / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((project / "pruned").resolve())
    adapted = AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True).eval()
    ids = torch.randint(4, 260, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def sigkill_after_checkpoint(project: Path, step: int) -> Path:
    """Run ``prunectl recover`` and SIGKILL it once ``checkpoint-{step}`` is complete; returns
    that checkpoint's ``trainer_state.json``."""
    cli = Path(sys.executable).parent / "prunectl"
    process = subprocess.Popen([str(cli), "recover", "-p", str(project), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = project / "recovered" / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not (project / "recovered" / "model").exists()
    return first


def test_recover_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path, text_file):
    project = pruned_project(tmp_path, text_file, max_steps=12)
    sigkill_after_checkpoint(project, 2)
    assert recover_record(project)["status"] != "done"

    result = invoke("recover", "-p", project, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = recover_record(project)["summary"]
    assert 2 <= summary["resumed_from_step"] < 12 and summary["steps"] == 12


def test_run_refuses_an_unrunnable_recovery_setup_before_calibrating(tmp_path, text_file):
    """FSDP on the CPU cannot run; `prunectl run` says so before spending time on calibration."""
    model_dir = save_tiny(tmp_path / "tiny", "llama")
    recipe = taylor_recipe(tmp_path / "recipe.yaml", model_dir, text_file, 2,
                           distributed={"fsdp": {"version": 2}})
    project = tmp_path / "proj"
    result = invoke("run", "-p", project, "-r", recipe)

    assert result.exit_code == 2, result.output
    assert "recover.distributed.fsdp asks for fsdp, which needs a launcher" in result.output
    assert not (project / "calibration").exists()
