"""Bad input and damaged project files, through the CLI: exit 2 with one line that names the
problem and the fix, and the project left byte for byte as it was (issue 12).  Also the checks
that a finished step's files are verified, not only found, before the step is trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import invoke, manual_recipe, one_error_line, tree
from test_cli_errors import snapshot

from prunectl.project import state as project_module






def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _randomize(file: Path) -> None:
    file.write_bytes(os.urandom(file.stat().st_size))


@pytest.mark.parametrize("relative, damage, step", [
    ("calibration/meta.json", _truncate, "calibrate"),
    ("pruned/model.safetensors", _randomize, "apply"),
    ("eval/pruned/perplexity-text.json", _randomize, "eval"),
])
def test_a_damaged_output_is_reported_not_trusted(project, relative, damage, step):
    """Truncated or overwritten, an output file of a finished step stops the run in one line
    that says how to go on; deleting it re-runs the step, which writes the same bytes again."""
    file = project / relative
    original = file.read_bytes()
    damage(file)
    before = tree(project)
    line = one_error_line(invoke("run", "-p", project, "--quiet"),
                          relative, f"step '{step}'", "--force", "delete")
    assert "content changed" in line
    assert tree(project) == before

    file.unlink()
    result = invoke("run", "-p", project, "--quiet")
    assert result.exit_code == 0, result.output
    assert file.read_bytes() == original


def test_force_rewrites_a_damaged_output(project):
    file = project / "calibration" / "meta.json"
    original = file.read_bytes()
    _truncate(file)
    result = invoke("calibrate", "-p", project, "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert file.read_bytes() == original


def test_a_pinned_recipe_cut_mid_file_is_refused(project):
    pinned = project / "recipe.yaml"
    text = pinned.read_text()
    pinned.write_text(text[: text.index("calibration:")])  # still valid YAML, a different recipe
    before = tree(project)
    one_error_line(invoke("run", "-p", project, "--quiet"), "recipe.yaml", "changed after it was pinned")
    assert tree(project) == before


@pytest.mark.parametrize("content, fragments", [
    (os.urandom(300) + b"\xff\xfe", ["bad.yaml", "not UTF-8"]),
    (b"model: {path: m}\nmethod: {name: block}\ntarget: {blocks: 1}\ntarget: {blocks: 3}\n",
     ["bad.yaml", "'target' is given twice", "lines 3 and 4"]),
])
def test_a_bad_recipe_file_is_one_line(project, tmp_path, content, fragments):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    before = tree(project)
    one_error_line(invoke("run", "-p", project, "-r", bad, "--quiet"), *fragments)
    assert tree(project) == before


@pytest.mark.parametrize("damage, fragment", [
    (_truncate, "is truncated or damaged"), (_randomize, "is not a safetensors file"),
])
def test_a_corrupt_model_leaves_the_project_as_it_was(project, tmp_path, finished, damage,
                                                      fragment):
    """The recipe is not re-pinned to the broken model and no step is recorded as failed."""
    recipe = yaml.safe_load(finished[1].read_text())
    model = tmp_path / "broken"
    shutil.copytree(recipe["model"]["path"], model)
    damage(model / "model.safetensors")
    before = tree(project)
    one_error_line(invoke("run", "-p", project, "--set", f"model.path={model}", "--quiet"),
                   f"{model / 'model.safetensors'} {fragment}", "copy the model again")
    assert tree(project) == before

    fresh = tmp_path / "fresh"
    recipe = manual_recipe(tmp_path / "r.yaml", model, Path(recipe["calibration"]["dataset"]))
    one_error_line(invoke("calibrate", "-p", fresh, "-r", recipe, "--quiet"), fragment)
    assert tree(fresh) == {}


@pytest.mark.parametrize("make, fragments", [
    (lambda lock: lock.write_bytes(os.urandom(64) + b"\x00"), ["not a prunectl lock file", "remove it"]),
    (lambda lock: lock.write_text("hello\nworld\n"), ["not a prunectl lock file"]),
    (lambda lock: lock.mkdir(), ["is a directory", "remove it"]),
])
def test_a_garbage_lock_is_named_as_such(project, make, fragments):
    make(project / ".prunectl.lock")
    before = tree(project)
    line = one_error_line(invoke("run", "-p", project, "--quiet"), ".prunectl.lock", *fragments)
    assert "process 0" not in line
    assert tree(project) == before


def test_an_unwritable_project_directory_is_bad_input(project, monkeypatch):
    """``PermissionError`` on the lock (root ignores file modes, so the error is injected)."""
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).endswith(project_module.LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(project_module.os, "open", refuse)
    before = tree(project)
    one_error_line(invoke("run", "-p", project, "--quiet"), "cannot write in project directory",
                   "permissions")
    assert tree(project) == before


def test_a_garbage_recover_inputs_file_is_bad_input(project):
    recovered = project / "recovered"
    recovered.mkdir()
    (recovered / "inputs.json").write_bytes(os.urandom(200) + b"\xff")
    text = yaml.safe_load((project / "recipe.yaml").read_text())["calibration"]["dataset"]
    before = tree(project)
    one_error_line(invoke("recover", "-p", project, "--quiet", "--set",
                          f"recover={{dataset: {text}, format: text, max_steps: 1, val_set_size: 2}}"),
                   "recovered/inputs.json", "not valid JSON")
    assert {k: v for k, v in tree(project).items() if k != "recipe.yaml" and
            k != "recipe.previous.yaml"} == {k: v for k, v in before.items()
                                             if k not in ("recipe.yaml", "recipe.previous.yaml")}


#: the project's manual removal reads no calibration text; block search does
USES_TEXT = ["method={name: block}", "target.blocks=2"]


@pytest.mark.parametrize("sets, fragments", [
    (["calibration.seqlen=1024"], ["calibration.seqlen=1024", "max_position_embeddings=512"]),
    (["calibration.nsamples=100000"], ["calibration.nsamples=100000", "distinct windows",
                                       "at most"]),
])
def test_calibration_beyond_the_model_or_the_text_is_refused(project, sets, fragments):
    before = tree(project)
    args = [a for s in [*sets, *USES_TEXT] for a in ("--set", s)]
    one_error_line(invoke("calibrate", "-p", project, "--quiet", *args), *fragments)
    assert tree(project) == before


@pytest.mark.parametrize("content, fragment", [
    (b"", "the file is empty"), (b"\x00\xff\xfe" + os.urandom(100), "not UTF-8 text"),
])
def test_an_empty_or_binary_calibration_file_is_named(project, tmp_path, content, fragment):
    data = tmp_path / "calib.txt"
    data.write_bytes(content)
    before = tree(project)
    one_error_line(invoke("calibrate", "-p", project, "--quiet", "--set",
                          f"calibration.dataset={data}", *[a for s in USES_TEXT for a in ("--set", s)]),
                   f"{data} holds no text rows", fragment)
    assert tree(project) == before


def test_a_truncated_gguf_is_named(tmp_path, text_file):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00\x05\x00")  # magic and version, then cut
    recipe = manual_recipe(tmp_path / "r.yaml", gguf, text_file)
    one_error_line(invoke("calibrate", "-p", tmp_path / "p", "-r", recipe, "--quiet"),
                   f"{gguf} is not a complete GGUF file", "download it again")
    assert tree(tmp_path / "p") == {}


def test_a_task_directory_without_a_task_is_named(project, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text("description: no task key here\n")
    one_error_line(invoke("eval", "-p", project, "--quiet", "--tasks", "mine", "--set",
                          f"eval.task_paths=[{tasks}]"), str(tasks), "defines no lm-eval task")


def test_orphaned_temporary_files_are_removed_when_the_project_is_opened(project):
    orphans = [project / "calibration" / ".tokens.safetensors.4242.0badcafe.tmp",
               project / ".state.json.4242.0badcafe.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half")
    (project / "pruned.tmp-x1y2").mkdir()
    (project / "pruned.tmp-x1y2" / "model.safetensors").write_bytes(b"half")
    kept = snapshot(project)
    result = invoke("run", "-p", project, "--quiet")
    assert result.exit_code == 0, result.output
    assert not any(o.exists() for o in orphans) and not (project / "pruned.tmp-x1y2").exists()
    assert {k: v for k, v in snapshot(project).items() if k != "state.json"} == \
        {k: v for k, v in kept.items() if k != "state.json" and ".tmp" not in k}


def test_one_evaluation_token_cache_serves_every_model(finished):
    """The dense and the pruned tokenizer are the same: one cache file, not two identical."""
    assert len(list((finished[0] / "eval" / "tokens").glob("*.safetensors"))) == 1


def test_a_log_is_named_only_when_one_was_written(project, monkeypatch):
    from prunectl.steps import calibrate as calibrate_step

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(calibrate_step, "write_json", broken)
    inside = invoke("calibrate", "-p", project, "--force", "--quiet")
    assert inside.exit_code == 1
    log = project / "logs" / "calibrate.log"
    assert f"traceback in {log}" in inside.stderr and "RuntimeError: boom" in log.read_text()

    monkeypatch.setattr(project_module.Project, "pinned_recipe", broken)
    outside = invoke("calibrate", "-p", project, "--quiet")
    assert outside.exit_code == 1 and "RuntimeError: boom" in outside.stderr
    assert "traceback in" not in outside.stderr and "PRUNECTL_DEBUG=1" in outside.stderr
