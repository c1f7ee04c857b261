"""``export`` never deletes what prunectl did not write, one-off exports leave the project as it
was, and what prunectl creates honours the umask: through the CLI, trees compared by hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from gguf_models import VOCAB, bpe_tokenizer
from helpers import invoke, tiny_model, tree, write_recipe

from prunectl.steps.export_target import MANIFEST

def error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line




def manual_recipe(path: Path, model: Path, text: Path, export: dict) -> Path:
    """The manual removal these tests export, with ``export`` as the recipe's export section."""
    return write_recipe(
        path, model, text, calibration={"nsamples": 2, "seqlen": 16},
        method={"name": "manual", "remove": ["layers.0.attn", "layers.1.mlp"]},
        eval={"perplexity": {"datasets": [str(text)], "seqlen": 32, "batch_size": 2, "max_windows": 2}},
        export=export)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished project (every step, Hugging Face export in float32), made once."""
    from helpers import TEXT

    root = tmp_path_factory.mktemp("finished")
    model = root / "tiny"
    tiny_model("llama", vocab_size=VOCAB).save_pretrained(model)
    bpe_tokenizer().save_pretrained(model)
    text = root / "text.txt"
    text.write_text(TEXT * 20)
    recipe = manual_recipe(root / "recipe.yaml", model, text, {"dtype": "float32"})
    result = invoke("run", "-p", root / "runs" / "a", "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def work(finished, tmp_path) -> Path:
    """A copy of the finished project's folder: ``runs/a`` beside a second project ``runs/b``."""
    root = tmp_path / "work"
    shutil.copytree(finished, root)
    shutil.copytree(root / "runs" / "a", root / "runs" / "b")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my own work\n")
    return root


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("destination,message", [
    ("runs/b", "-o {} is a prunectl project"),
    ("runs", "-o {} contains the prunectl project"),
    ("runs/a/mine", "-o {} is inside the prunectl project"),
    ("mine", "-o {} holds files prunectl did not write (e.g. notes.txt)"),
])
def test_export_o_refuses_projects_and_foreign_folders_and_deletes_nothing(
        work, destination, message, force, monkeypatch):
    monkeypatch.chdir(work)
    before = tree(work)
    result = invoke("export", "-p", "runs/a", "-o", destination, *(["--force"] if force else []))
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert message.format(destination) in line and "never deletes what it did not write" in line
    assert "--force" not in line  # the way out is another folder, not --force
    assert tree(work) == before


def test_export_o_replaces_only_its_own_earlier_export(work, monkeypatch):
    monkeypatch.chdir(work)
    assert invoke("export", "-p", "runs/a", "-o", "out", "--quiet").exit_code == 0
    assert (work / "out" / MANIFEST).is_file() and (work / "out" / "README.md").is_file()
    assert {"config.json", "model.safetensors"} <= {p.name for p in (work / "out").iterdir()}
    # a killed export's folders (prunectl's marker inside) go; a user's look-alike stays
    for leftover in ("out.tmp-0123abcd", "out.old-89abcdef"):
        shutil.copytree(work / "out", work / leftover)
    (work / "out.tmp-backup").mkdir()
    (work / "out.tmp-backup" / MANIFEST).write_text("{}")
    again = invoke("export", "-p", "runs/a", "-o", "out", "--force", "--quiet")
    assert again.exit_code == 0, again.output
    assert not (work / "out.tmp-0123abcd").exists() and not (work / "out.old-89abcdef").exists()
    assert (work / "out.tmp-backup" / MANIFEST).read_text() == "{}"
    # once the user adds a file (or edits one), the folder is theirs
    (work / "out" / "eval-notes.md").write_text("mine\n")
    before = tree(work)
    refused = invoke("export", "-p", "runs/a", "-o", "out", "--force")
    assert refused.exit_code == 2
    assert "eval-notes.md (not written by prunectl)" in error_line(refused.output)
    assert tree(work) == before


def test_one_off_exports_leave_the_pinned_recipe_and_export_unchanged(work, monkeypatch):
    monkeypatch.chdir(work)
    project = work / "runs" / "a"
    kept = {name: tree(project / name) if (project / name).is_dir() else
            hashlib.sha256((project / name).read_bytes()).hexdigest()
            for name in ("export", "recipe.yaml", "state.json")}
    # the recipe says dtype: float32 (a Hugging Face setting): GGUF maps it to f32, no refusal
    gguf = invoke("export", "-p", project, "--format", "gguf", "--quiet")
    assert gguf.exit_code == 0, gguf.output
    assert (project / "exports" / "gguf-f32" / "tiny-manual-f32.gguf").is_file()
    # an outtype that differs from the dtype wins, with a note
    q8 = invoke("export", "-p", project, "--format", "gguf", "--outtype", "q8_0")
    assert q8.exit_code == 0, q8.output
    assert "export.dtype=float32 is ignored for GGUF (outtype q8_0)" in " ".join(q8.output.split())
    assert (project / "exports" / "gguf-q8_0" / "tiny-manual-q8_0.gguf").is_file()
    # issue 23's sequence: this export must not become part of the project
    listed = invoke("export", "-p", project, "--format", "gguf", "--outtype", "f32", "-o", "gguf_flap",
                    "--set", "~export.dtype", "--quiet")
    assert listed.exit_code == 0, listed.output
    assert (work / "gguf_flap" / "tiny-manual-f32.gguf").is_file()
    half = invoke("export", "-p", project, "-o", "half", "--set", "export.dtype=float16", "--quiet")
    assert half.exit_code == 0, half.output
    assert '"dtype": "float16"' in (work / "half" / "config.json").read_text()
    assert kept == {name: tree(project / name) if (project / name).is_dir() else
                    hashlib.sha256((project / name).read_bytes()).hexdigest() for name in kept}
    rerun = invoke("run", "-p", project, "--json")
    assert rerun.exit_code == 0, rerun.output
    assert '"step": "export", "status": "up-to-date"' in rerun.output
    assert kept["export"] == tree(project / "export")


def test_export_formats_writes_both_side_by_side(finished, tmp_path):
    recipe = manual_recipe(tmp_path / "both.yaml", finished / "tiny", finished / "text.txt",
                           {"formats": ["hf", "gguf"], "dtype": "float16"})
    project = tmp_path / "runs" / "both"
    shutil.copytree(finished / "runs" / "a", project)
    result = invoke("export", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    assert (project / "export" / "config.json").is_file()
    assert (project / "export-gguf" / "tiny-manual-f16.gguf").is_file()
    record = yaml.safe_load((project / "recipe.yaml").read_text())["export"]
    assert record["formats"] == ["hf", "gguf"]


def test_created_folders_and_files_are_world_readable_under_umask_022(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o022)
    try:
        result = invoke("run", "-p", "p", "-r", finished / "recipe.yaml", "--quiet")
        assert result.exit_code == 0, result.output
        assert invoke("export", "-p", "p", "-o", "out", "--quiet").exit_code == 0
    finally:
        os.umask(previous)
    checked = [tmp_path / "p", tmp_path / "out", *(tmp_path / "p").rglob("*"), *(tmp_path / "out").rglob("*")]
    assert {"pruned", "export", "scores", "out"} <= {p.name for p in checked}
    private = [p for p in checked if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert not private
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o011 == 0o011 for p in checked if p.is_dir())


SHIPPED = sorted((Path(__file__).parents[1] / "src" / "prunectl" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_exports_to_gguf_with_its_dtype_mapped(recipe, tmp_path):
    """What `export --format gguf` asks of a shipped recipe (the CLI's overrides): no refusal,
    and the Hugging Face dtype picks the GGUF type."""
    from prunectl.recipe.load import load_recipe
    from prunectl.recipe.sections import DTYPE_OUTTYPE

    # the placeholder GGUF of the SmolLM2 recipes is replaced by their documented --set
    sets = [f"model.path={tmp_path}"] if "--set model.path=" in recipe.read_text() else []
    plain, _ = load_recipe(recipe, sets)
    gguf, _ = load_recipe(recipe, [*sets, "~export.formats", "export.format=gguf"])
    assert gguf.export.all_formats == ["gguf"]
    assert gguf.export.gguf_outtype() == (DTYPE_OUTTYPE.get(plain.export.dtype, "f16"), None)
