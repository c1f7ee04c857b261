"""Verified state through the CLI (issue 27): a step reads an earlier output only as that step
wrote it, a damaged one (truncated, zero-filled, one bit flipped) is refused with exit 2 naming
the file and the step to re-run, and ``status`` flags it; a re-made upstream model makes the
steps that read it stale, so eval and export follow it.

One finished project (taylor pruning, LoRA recovery distilled from a cached teacher with a
checkpoint, evaluation of every model, export) is built once per module and copied per case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import TEXT, invoke, manual_recipe, one_error_line, save_tiny

from prunectl.digest import digest


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verified")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}. " + TEXT for i in range(30)))
    recover = {"dataset": str(text), "format": "text", "cutoff_len": 32, "batch_size": 4,
               "micro_batch_size": 4, "max_steps": 2, "save_steps": 2, "val_set_size": 4,
               "objective": "kd+lm", "kd": {"cache_topk": 8, "weight": 0.5}}
    recipe = manual_recipe(root / "recipe.yaml", save_tiny(root / "tiny", "llama"), text,
                           method={"name": "taylor", "layer_start": 1, "layer_end": 3},
                          target={"params_ratio": 0.2}, recover=recover)
    project = root / "proj"
    result = invoke("run", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    return project


@pytest.fixture
def project(finished, tmp_path) -> Path:
    copy = tmp_path / "proj"
    shutil.copytree(finished, copy)
    return copy


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def zero_fill(file: Path) -> None:
    file.write_bytes(bytes(file.stat().st_size))


def flip_bit(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    file.write_bytes(bytes(data))


def status(project: Path, *flags: str) -> tuple[int, dict[str, dict]]:
    result = invoke("status", "-p", project, "--json", *flags)
    rows = json.loads(result.stdout.splitlines()[0])
    return result.exit_code, {row["step"]: row for row in rows}




def _only(project: Path, pattern: str) -> str:
    found = sorted(project.glob(pattern))
    assert len(found) == 1, found
    return found[0].relative_to(project).as_posix()


#: output -> (the command that reads it, the step whose re-run the refusal names, and the
#: step whose status row flags it)
CASES = {
    "calibration/tokens.safetensors": (["score", "--force", "-q"], "calibrate"),
    "calibration/meta.json": (["score", "--force", "-q"], "calibrate"),
    "scores/scores.safetensors": (["search", "--force", "-q"], "score"),
    "pruned/model.safetensors": (["eval", "--force", "-q"], "apply"),
    "pruned/config.json": (["export", "--force", "-q"], "apply"),
    "pruned/prunectl.json": (["report"], "apply"),
    "recovered/model/model.safetensors": (["export", "--force", "-q"], "recover"),
    "recovered/adapter/adapter_model.safetensors": (["run", "-q"], "recover"),
    "recovered/summary.json": (["run", "-q"], "recover"),
    "recovered/teacher_topk/shard-00000.safetensors": (["recover", "--force", "-q"], "recover"),
    "eval/pruned/perplexity-text.json": (["report"], "eval"),
    "eval/tokens/text-*.safetensors": (["eval", "--force", "-q"], "eval"),
    "export/model.safetensors": (["export", "-q"], "export"),
}


@pytest.mark.parametrize("damage", [truncate, zero_fill, flip_bit])
@pytest.mark.parametrize("pattern", list(CASES))
def test_a_damaged_output_is_refused_and_flagged(project, pattern, damage):
    relative = _only(project, pattern)
    command, step = CASES[pattern]
    file = project / relative
    damage(file)
    damaged = file.read_bytes()
    code, rows = status(project)
    assert code == 0 and any(relative in entry for entry in rows[step]["damaged"]), rows[step]
    one_error_line(invoke(*command, "-p", project), relative, "damaged", step)
    assert file.read_bytes() == damaged  # refused before anything was rewritten


def test_export_refuses_a_damaged_result_its_card_would_quote(project):
    flip_bit(project / "eval" / "dense" / "perplexity-text.json")
    one_error_line(invoke("export", "-p", project, "--force", "-q"), "eval/dense/perplexity-text.json",
            "damaged", "eval")


@pytest.mark.parametrize("damage", [truncate, zero_fill])
def test_a_damaged_plan_is_refused_and_flagged(project, damage):
    """The plan is the one output meant to be edited by hand (``apply`` re-applies an edited
    plan that validates), so it is checked as a plan; ``status`` flags it all the same."""
    damage(project / "search" / "plan.json")
    _, rows = status(project)
    assert rows["search"]["damaged"][0].startswith("search/plan.json (")
    one_error_line(invoke("apply", "-p", project, "--force", "-q"), "search/plan.json",
            "not a valid plan", "search --force")


@pytest.mark.parametrize("damage", [truncate, zero_fill, flip_bit])
@pytest.mark.parametrize("name", ["adapter_model.safetensors", "optimizer.pt"])
def test_a_resumed_recovery_refuses_a_damaged_checkpoint(project, name, damage):
    """A killed recovery resumes from its checkpoint: the adapter and the optimizer state are
    read back only as the Trainer saved them."""
    file = project / "recovered" / "checkpoints" / "checkpoint-2" / name
    damage(file)
    shutil.rmtree(project / "recovered" / "model")  # as if killed before the merged model
    code, rows = status(project, "--verify")
    assert code == 2 and any(f"checkpoint-2/{name}" in e for e in rows["recover"]["damaged"])
    one_error_line(invoke("recover", "-p", project, "--quiet"), f"checkpoint-2/{name}", "damaged",
            "recover --force", "delete")


def test_status_verify_hashes_what_the_quick_check_trusts(project, monkeypatch):
    """A large file whose size and modification time are as recorded is trusted by a plain
    ``status`` (a stat, no hash) and hashed by ``status --verify``."""
    import os

    from prunectl import digest as digest_module

    file = project / "pruned" / "model.safetensors"
    stat = file.stat()
    flip_bit(file)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(digest_module, "SMALL_FILE", 0)
    monkeypatch.setattr("prunectl.project.state.SMALL_FILE", 0)
    code, rows = status(project)
    assert code == 0 and "damaged" not in rows["apply"]
    code, rows = status(project, "--verify")
    assert code == 2 and rows["apply"]["damaged"] == ["pruned/model.safetensors (content changed)"]


def test_an_intact_project_is_verified_clean(project):
    code, rows = status(project, "--verify")
    assert code == 0 and not any("damaged" in row or row.get("stale") for row in rows.values())


def test_a_remade_model_makes_eval_and_export_stale_and_they_follow_it(project, monkeypatch):
    """``recover --force`` whose training comes out different (same recipe, so the same
    fingerprint: here one weight nudged after the run): eval and export are stale (status no
    longer says done), and ``run`` measures and exports the new model."""
    import prunectl.recovery.run
    from safetensors.torch import load_file, save_file

    weights = project / "recovered" / "model" / "model.safetensors"
    train = prunectl.recovery.run.run_recovery

    def nondeterministic(run, source, out, *args):
        summary = train(run, source, out, *args)
        tensors = load_file(weights)
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] + 1e-3
        save_file(tensors, weights, metadata={"format": "pt"})
        return summary

    before, exported = digest(weights), digest(project / "export" / "model.safetensors")
    assert before == exported
    monkeypatch.setattr(prunectl.recovery.run, "run_recovery", nondeterministic)
    result = invoke("recover", "-p", project, "--quiet", "--force")
    assert result.exit_code == 0, result.output
    assert digest(weights) != before
    _, rows = status(project)
    assert rows["eval"]["stale"] and rows["export"]["stale"]
    assert not rows["apply"].get("stale") and not rows["recover"].get("stale")
    result = invoke("run", "-p", project, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    ran = {s["step"]: s["status"] for s in json.loads(result.stdout)["steps"]}
    assert ran["eval"] == "done" and ran["export"] == "done" and ran["recover"] == "up-to-date"
    assert digest(project / "export" / "model.safetensors") == digest(weights)
    measured = json.loads((project / "eval" / "recovered" / "perplexity-text.json").read_text())
    record = json.loads((project / "state.json").read_text())["steps"]["recover"]
    assert measured["model_fingerprint"] == digest(
        {name: seen["sha256"] for name, seen in record["files"].items()
         if name.startswith("recovered/model/")})
    _, rows = status(project)
    assert not any(row.get("stale") for row in rows.values())
