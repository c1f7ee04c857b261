"""Bad input gives exit 2, one clear line naming the problem, and loses nothing computed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import invoke, manual_recipe


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".prunectl.lock"
    }


@pytest.fixture
def finished_project(tmp_path, tiny_model_dir, text_file) -> Path:
    recipe = manual_recipe(tmp_path / "recipe.yaml", tiny_model_dir, text_file)
    project = tmp_path / "proj"
    result = invoke("search", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    return project


def bad_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


CASES = {
    "malformed yaml": (lambda t, m, x: ["-r", bad_recipe(t, "model: [unclosed\n")], ["bad.yaml"]),
    "unknown key": (
        lambda t, m, x: ["-r", bad_recipe(t, f"model: {{path: {m}, colour: red}}\n")],
        ["bad.yaml", "model.colour"],
    ),
    "unknown method": (
        lambda t, m, x: ["--set", "method={name: blockk}"],
        ["unknown method 'blockk'", "did you mean 'block'"],
    ),
    "impossible ratio": (
        lambda t, m, x: ["--set", "~target", "--set", "target.params_ratio=1.5"],
        ["target.params_ratio"],
    ),
    "both targets": (
        lambda t, m, x: ["--set", "target.blocks=2", "--set", "target.params_ratio=0.2"],
        ["target"],
    ),
    "block out of range": (
        lambda t, m, x: ["--set", "method.remove=[layers.9.mlp]"],
        ["layers.9.mlp", "out of range"],
    ),
    "bad block name": (
        lambda t, m, x: ["--set", "method.remove=[layer.1.ffn]"],
        ["layer.1.ffn", "layers.N.attn"],
    ),
    "missing model": (
        lambda t, m, x: ["--set", f"model.path={t / 'nowhere'}"],
        ["nowhere"],
    ),
    "wrong type": (lambda t, m, x: ["--set", "calibration.nsamples=many"], ["calibration.nsamples"]),
    "bound without tokens": (
        lambda t, m, x: ["--set", "method={name: block, bound_topk: 0}"],
        ["method.bound_topk"],
    ),
    "unknown cache place": (
        lambda t, m, x: ["--set", "method={name: block, cache: floppy}"],
        ["method.cache", "disk"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_keeps_files(
    case, finished_project, tmp_path, tiny_model_dir, text_file
):
    make_args, expected = CASES[case]
    before = snapshot(finished_project)
    result = invoke("search", "-p", finished_project, "--force", "--quiet",
                    *make_args(tmp_path, tiny_model_dir, text_file))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in expected:
        assert fragment in lines[0]
    assert snapshot(finished_project) == before


def test_wrong_architecture_is_refused_with_the_supported_list(tmp_path, text_file):
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260)).save_pretrained(
        model_dir
    )
    recipe = manual_recipe(tmp_path / "r.yaml", model_dir, text_file)
    result = invoke("search", "-p", tmp_path / "p", "-r", recipe, "--quiet")
    assert result.exit_code == 2
    assert "gpt2" in result.stderr and "llama" in result.stderr and "qwen2" in result.stderr


def test_multimodal_gemma3_is_refused_naming_its_text_model(tmp_path, text_file):
    from transformers import Gemma3Config

    model_dir = tmp_path / "gemma3"
    Gemma3Config().save_pretrained(model_dir)  # a config alone: refused before any weight
    recipe = manual_recipe(tmp_path / "r.yaml", model_dir, text_file)
    result = invoke("search", "-p", tmp_path / "p", "-r", recipe, "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'gemma3' is not supported (multimodal Gemma 3" in lines[0]
    assert "gemma3_text" in lines[0] and "gemma2" in lines[0]


def test_corrupt_state_is_an_error_and_is_not_overwritten(finished_project):
    state = finished_project / "state.json"
    state.write_text("{not json")
    result = invoke("search", "-p", finished_project, "--quiet")
    assert result.exit_code == 2
    assert "state.json" in result.stderr
    assert state.read_text() == "{not json"


def test_foreign_state_is_an_error(finished_project):
    state = finished_project / "state.json"
    state.write_text('{"hello": "world"}')
    result = invoke("status", "-p", finished_project)
    assert result.exit_code == 2
    assert "state.json" in result.stderr


def test_fresh_project_without_recipe_says_how_to_start(tmp_path):
    result = invoke("calibrate", "-p", tmp_path / "new")
    assert result.exit_code == 2
    assert "-r/--recipe" in result.stderr


def test_locked_project_names_the_holder(finished_project):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (finished_project / ".prunectl.lock").write_text(
            f"{holder.pid}\n{os.uname().nodename}\n2026-01-01T00:00:00\n"
        )
        result = invoke("search", "-p", finished_project, "--quiet")
        assert result.exit_code == 2
        assert str(holder.pid) in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_recipe_file_is_pinned_and_reused(finished_project):
    pinned = yaml.safe_load((finished_project / "recipe.yaml").read_text())
    assert pinned["method"]["name"] == "manual"
    result = invoke("search", "-p", finished_project, "--json", "--quiet")
    assert result.exit_code == 0, result.output


def test_a_reader_that_left_ends_the_command_quietly(tmp_path):
    """`prunectl recipes ls | head -1`: the closed pipe ends the command with the shell's
    SIGPIPE status and nothing on stderr, not an "internal error"."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "prunectl"), "recipes", "ls"],
                              stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
