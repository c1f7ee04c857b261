"""Distillation recovery through the CLI: a SIGKILLed KD run resumes to the weights of an
uninterrupted one, every new key is set with ``--set``, and bad values exit 2 with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import invoke
from test_cli_errors import snapshot
from test_recover_cli import pruned_project, recover_record, sigkill_after_checkpoint

from prunectl.modeling.loading import load_project_model

KD = {"objective": "kd+lm", "mode": "full", "kd": {"temperature": 2.0, "weight": 0.7,
                                                    "cache_topk": 32}, "learning_rate": 1e-3}


def weights(project: Path) -> dict[str, torch.Tensor]:
    model = load_project_model(project / "recovered" / "model", torch.device("cpu"),
                               torch.float32)
    return model.state_dict()


def test_a_sigkilled_kd_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, text_file):
    project = pruned_project(tmp_path, text_file, max_steps=6, **KD)
    straight = tmp_path / "straight"
    shutil.copytree(project, straight)
    killed_at = sigkill_after_checkpoint(project, 2).stat().st_mtime

    assert invoke("recover", "-p", project, "--quiet").exit_code == 0
    assert invoke("recover", "-p", straight, "--quiet").exit_code == 0
    resumed, uninterrupted = recover_record(project)["summary"], recover_record(straight)["summary"]
    assert 2 <= resumed["resumed_from_step"] < 6 and resumed["steps"] == 6
    assert uninterrupted["resumed_from_step"] is None
    for key in ("kl_before", "perplexity_before", "kl_after", "perplexity_after"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-5)
    reference = weights(straight)
    for name, tensor in weights(project).items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-5, atol=1e-7)
    # the cache was built once, before the kill, and reused by the resumed run
    meta = project / "recovered" / "teacher_topk" / "meta.json"
    assert meta.stat().st_mtime < killed_at


BAD = {
    "recover.objective=distill": ["recover.objective", "expected one of lm, kd, kd+lm"],
    "recover.mode=half": ["recover.mode", "expected one of lora, full"],
    "recover.kd.temperature=0": ["recover.kd.temperature", "> 0"],
    "recover.kd.weight=1": ["recover.kd.weight", "< 1"],
    "recover.kd.cache_topk=0": ["recover.kd.cache_topk", "> 0"],
    "recover.kd.colour=red": ["recover.kd.colour"],
    "recover.objective=lm": ["got kd options with objective lm"],
    "recover.objective=kd": ["got kd.weight with objective kd"],
    "recover.kd.cache_topk=300": ["recover.kd.cache_topk=300 is larger than the teacher's "
                                  "vocabulary (260)"],
}


def test_kd_keys_through_the_cli_and_bad_values_exit_2_with_one_line(tmp_path, text_file):
    project = pruned_project(tmp_path, text_file, max_steps=2, **KD)
    before = snapshot(project)
    for setting, expected in BAD.items():
        result = invoke("recover", "-p", project, "--quiet", "--set", setting)
        assert result.exit_code == 2, (setting, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for fragment in expected:
            assert fragment in lines[0], lines[0]
        assert snapshot(project) == before, setting

    result = invoke("recover", "-p", project, "--quiet", "--set", "recover.objective=kd",
                    "--set", "recover.kd={temperature: 1.5}", "--set", "recover.mode=lora")
    assert result.exit_code == 0, result.output
    pinned = (project / "recipe.yaml").read_text()
    assert "objective: kd\n" in pinned and "temperature: 1.5" in pinned
    summary = recover_record(project)["summary"]
    assert summary["steps"] == 2 and summary["kl_before"] > 0
    assert (project / "recovered" / "adapter").is_dir()
    assert not (project / "recovered" / "teacher_topk").exists()  # live teacher: no cache
