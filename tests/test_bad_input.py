"""Bad input is refused before anything is written or pinned (issue 27): exit 2, one line on
stderr (no progress before it, even without ``--quiet``), the project byte for byte as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import invoke, one_error_line, tree

from prunectl.project.state import LOCK_NAME

#: a recipe change: (command, --set overrides, fragments the error line names)
REFUSED = {
    "flap min_kept above the widths": (
        "run", ["method={name: flap, min_kept: 1000}", "target.params_ratio=0.2"],
        ["can give at most 0", "each layer keeps 1000"]),
    "taylor layer range empty": (
        "run", ["method={name: taylor, layer_start: 3, layer_end: 1}", "target.params_ratio=0.2"],
        ["layer_start=3 / layer_end=1", "4-layer model"]),
    "shortgpt more blocks than layers": (
        "run", ["method={name: shortgpt}", "target.blocks=5"],
        ["target.blocks=5", "4 candidate layers", "at most 3"]),
    "shortgpt every layer": (
        "run", ["method={name: shortgpt}", "target.blocks=4"], ["whole network", "at most 3"]),
    "block search every block": (
        "search", ["method={name: block}", "target.blocks=8"], ["8 candidate blocks", "at most 7"]),
    "puzzle target out of reach": (
        "run", ["method={name: puzzle}", "target.params_ratio=0.99"],
        ["no combination of the library's variants meets params"]),
    "flap without a target": ("run", ["method={name: flap}"], ["flap needs target.params_ratio"]),
    "block search without a target": (
        "search", ["method={name: block}"], ["target.blocks or target.params_ratio is required"]),
    "boolean block count": (
        "search", ["method={name: block}", "target.blocks=true"],
        ["target.blocks: got true", "not a boolean"]),
    "zero blocks": ("search", ["method={name: block}", "target.blocks=0"],
                    ["target.blocks: got 0", "> 0"]),
    "unknown task": ("eval", ["eval.tasks=[nosuchtask]", "eval.perplexity.seqlen=32"],
                     ["unknown lm-eval task 'nosuchtask'"]),
    "missing task path": ("eval", ["eval.task_paths=[/nowhere/tasks]", "eval.perplexity.seqlen=32"],
                          ["eval.task_paths: /nowhere/tasks does not exist"]),
    "device this machine lacks": ("run", ["model.device=cuda:7"], ["cuda:7"]),
    "seed beyond 64 bits": (
        "calibrate", ["calibration.seed=1180591620717411303424", "method={name: block}",
                      "target.blocks=2"], ["calibration.seed", "< 4294967296"]),
    "memory budget below a layer": (
        "run", ["execution.memory_budget_gb=1e-09"],
        ["execution.memory_budget_gb=1e-09 is below", "one decoder layer"]),
    "duplicate key in one flow mapping": (
        "run", ["method={name: flap, name: block}"],
        ["key 'name' is given twice", "line 1, columns 2 and 14"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refusal_changes_nothing_and_prints_one_line(case, project):
    command, sets, fragments = REFUSED[case]
    before = tree(project)
    result = invoke(command, "-p", project, *[a for s in sets for a in ("--set", s)])
    one_error_line(result, *fragments)
    assert tree(project) == before


@pytest.mark.parametrize("command", ["search", "run"])
def test_zero_blocks_from_the_command_line_is_refused(project, command):
    before = tree(project)
    one_error_line(invoke(command, "-p", project, "--method", "block", "--blocks", "0"),
                   "target.blocks: got 0")
    assert tree(project) == before


def test_an_unknown_task_flag_is_refused_before_any_result(project):
    (project / "eval" / "dense" / "perplexity-text.json").unlink()  # would be measured first
    before = tree(project)
    one_error_line(invoke("eval", "-p", project, "--tasks", "nosuchtask"),
                   "unknown lm-eval task 'nosuchtask'")
    assert tree(project) == before


def test_a_duplicate_key_on_one_line_of_a_recipe_file(project, finished, tmp_path):
    recipe = yaml.safe_load(finished[1].read_text())
    text = yaml.safe_dump({k: v for k, v in recipe.items() if k != "method"})
    bad = tmp_path / "dup.yaml"
    bad.write_text(text + "method: {name: flap, name: block}\n")
    line = len(text.splitlines()) + 1
    before = tree(project)
    one_error_line(invoke("run", "-p", project, "-r", bad),
                   str(bad), f"line {line}, columns 10 and 22")
    assert tree(project) == before


def _no_space(kind: str, filename: str) -> Exception:
    """ENOSPC as Python's writers raise it, or as safetensors' Rust writer does (message seen on
    a full tmpfs: no errno, no file name)."""
    import errno

    from safetensors import SafetensorError

    if kind == "OSError":
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return SafetensorError("Error while serializing: I/O error: No space left on device "
                           "(os error 28)")


@pytest.mark.parametrize("kind", ["OSError", "SafetensorError"])
def test_a_full_disk_while_writing_leaves_the_project_as_it_was(project, monkeypatch, kind):
    """ENOSPC from the safetensors writer, after part of the file is written: exit 2 naming
    the file, no partial output, the old recipe pinned and the lock released."""
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise _no_space(kind, filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    before = tree(project)
    line = one_error_line(invoke("calibrate", "-p", project, "--quiet", "--set",
                                 "method={name: block}", "--set", "target.blocks=2"),
                          "cannot write", "No space left on device", "free some space")
    assert f"cannot write {project / 'calibration' / 'tokens.safetensors'}:" in line
    assert tree(project) == before
    assert not (project / LOCK_NAME).exists()


def test_a_full_disk_while_saving_the_pruned_model(project, monkeypatch):
    """transformers' save_pretrained meets ENOSPC (as safetensors raises it): the folder is
    named, the old pruned model stays."""
    from transformers import PreTrainedModel

    def full(self, directory, *args, **kwargs):
        raise _no_space("SafetensorError", directory)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    before = tree(project)
    one_error_line(invoke("apply", "-p", project, "--force", "--quiet"),
                   f"cannot write {project / 'pruned'}:", "No space left on device")
    assert tree(project) == before
    assert not (project / LOCK_NAME).exists()


def test_a_read_only_folder_while_writing_is_named(project, monkeypatch):
    """EROFS when a result is put in place, after the step started (root ignores file modes,
    so it is injected)."""
    import errno

    from prunectl import io

    real_replace = os.replace

    def read_only(src, dst):  # eval/ is on a read-only mount: found out mid-step
        if "eval" not in Path(dst).relative_to(project).parts:
            return real_replace(src, dst)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(io.os, "replace", read_only)
    before = tree(project)
    line = one_error_line(invoke("eval", "-p", project, "--force", "--quiet"),
                          "cannot write", "Read-only file system", "make the folder writable")
    assert str(project / "eval") in line
    assert tree(project) == before
    assert not (project / LOCK_NAME).exists()


def test_lora_target_modules_the_model_lacks(project):
    text = yaml.safe_load((project / "recipe.yaml").read_text())["calibration"]["dataset"]
    before = tree(project)
    one_error_line(invoke("recover", "-p", project, "--set",
                          f"recover={{dataset: {text}, format: text, max_steps: 1, "
                          "val_set_size: 2, target_modules: [q_proj, nope_proj]}"),
                   "recover.target_modules ['nope_proj'] match no linear layer", "'down_proj'")
    assert tree(project) == before


@pytest.mark.parametrize("change, fragments", [
    ({"num_hidden_layers": 0}, ["num_hidden_layers: 0", "no decoder layer"]),
    ({"intermediate_size": 128}, ["mlp.down_proj.weight has shape [64, 96]",
                                  "config.json describes [64, 128]", "does not belong"]),
])
def test_a_config_that_does_not_fit_the_model(finished, tmp_path, change, fragments):
    import json
    import shutil

    recipe = yaml.safe_load(finished[1].read_text())
    model = Path(shutil.copytree(recipe["model"]["path"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}))
    recipe["model"]["path"] = str(model)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    one_error_line(invoke("run", "-p", tmp_path / "p", "-r", tmp_path / "r.yaml"), *fragments)
    assert not (tmp_path / "p").exists() or tree(tmp_path / "p") == {}


def test_an_export_folder_that_cannot_be_written(project, tmp_path, monkeypatch):
    """``export -o`` into a read-only folder (injected: root ignores file modes)."""
    import errno

    folder = tmp_path / "read-only"
    folder.mkdir()
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    before = tree(project)
    line = one_error_line(invoke("export", "-p", project, "-o", folder / "model", "--quiet"),
                          f"cannot write {folder}", "Permission denied",
                          "make the folder writable")
    assert "internal error" not in line
    assert tree(project) == before and list(folder.iterdir()) == []
    assert not (project / LOCK_NAME).exists()


@pytest.mark.parametrize("blocks, fragments", [
    ("0", ["--blocks 0 removes nothing", "1 to 3"]),
    ("100", ["--blocks 100 exceeds the 3 removals searched"]),
])
def test_apply_blocks_the_plan_cannot_give(project, blocks, fragments):
    before = tree(project)
    one_error_line(invoke("apply", "-p", project, "--blocks", blocks, "--force"), *fragments)
    assert tree(project) == before
