"""The Python API, the CLI's twin: ``prunectl.Project(path).run/status`` share the CLI's
project, so each resumes what the other started; ``prunectl.load`` gives the model back; and
``import prunectl`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from helpers import save_tiny
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import prunectl
from prunectl.cli import app
from prunectl.errors import UserError


def test_import_prunectl_and_its_api_names_stays_light():
    code = ("import sys, prunectl; prunectl.Project; prunectl.load; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_project_run_resumes_the_cli_and_load_returns_the_model(tmp_path, text_file):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu", "dtype": "float32"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "manual", "remove": ["layers.0.attn", "layers.2"]},
        "eval": {"perplexity": {"datasets": [str(text_file)], "seqlen": 32, "max_windows": 2}}}))
    path = tmp_path / "proj"
    assert CliRunner().invoke(app, ["calibrate", "-p", str(path), "-r", str(recipe), "-q"]) \
        .exit_code == 0

    project = prunectl.Project(path)
    with pytest.raises(UserError, match="has no pruned model yet"):
        project.load()
    results = project.run(quiet=True)  # the pinned recipe: no recipe argument needed
    statuses = {r["step"]: r["status"] for r in results}
    assert statuses == {"calibrate": "up-to-date", "score": "done", "search": "done",
                        "apply": "done", "recover": "skipped", "eval": "done", "export": "done"}
    assert results[3]["summary"]["params_pruned"] > 0
    rows = {r["step"]: r for r in project.status()}
    assert rows["export"]["status"] == "done" and not any(r.get("stale") for r in rows.values())

    again = project.run(recipe, overrides=["export.dtype=float32"], quiet=True)
    assert {r["step"]: r["status"] for r in again}["export"] == "done"
    assert {r["status"] for r in again if r["step"] not in ("export", "recover")} == {"up-to-date"}

    model, tokenizer = prunectl.load(path, device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(path / "export", trust_remote_code=True)
    ids = tokenizer("pruning removes what a model does not need", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference.eval()(ids).logits)
    assert len(model.model.layers) == 3 and not model.training
    exported, _ = prunectl.load(path / "export", device="cpu")
    assert sum(p.numel() for p in exported.parameters()) == \
        sum(p.numel() for p in model.parameters())
    with pytest.raises(UserError, match="no recovered model yet"):
        project.load("recovered")
    with pytest.raises(UserError, match="neither a prunectl project nor a model directory"):
        prunectl.load(tmp_path)
