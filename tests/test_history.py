"""A project never loses a finished result: a ``-r`` recipe of another experiment is refused,
replaced results are kept in ``history/`` byte for byte, ``status`` lists them, ``gc`` removes
them only when asked.  Through the CLI, trees compared by hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gguf_models import VOCAB, bpe_tokenizer
from helpers import TEXT, invoke, tiny_model, tree, write_recipe




def evaluated(root: Path) -> dict:
    """The recipe sections these projects share: small calibration, perplexity on the text."""
    return {"calibration": {"nsamples": 2, "seqlen": 16},
            "eval": {"perplexity": {"datasets": [str(root / "text.txt")], "seqlen": 32,
                                    "batch_size": 2, "max_windows": 2}}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished ShortGPT project (2 of 4 blocks removed), and a manual recipe beside it."""
    root = tmp_path_factory.mktemp("history")
    tiny_model("llama", vocab_size=VOCAB).save_pretrained(root / "tiny")
    bpe_tokenizer().save_pretrained(root / "tiny")
    (root / "text.txt").write_text(TEXT * 20)
    recipe = write_recipe(root / "shortgpt.yaml", root / "tiny", root / "text.txt",
                          method={"name": "shortgpt"}, target={"blocks": 2}, **evaluated(root))
    write_recipe(root / "manual.yaml", root / "tiny", root / "text.txt",
                 method={"name": "manual", "remove": ["layers.1.mlp"]}, **evaluated(root))
    result = invoke("run", "-p", root / "runs" / "sg", "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def work(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def test_a_recipe_of_another_experiment_is_refused_and_changes_nothing(work):
    project = work / "runs" / "sg"
    before = tree(project, folders=False)
    again = invoke("run", "-p", project, "-r", work / "shortgpt.yaml", "--quiet")  # the same recipe
    assert again.exit_code == 0, again.output
    for extra in ([], ["--set", "target.blocks=1"]):
        result = invoke("run", "-p", project, "-r", work / "manual.yaml", *extra, "--quiet")
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: ") and "another experiment (method shortgpt -> manual, target.blocks 2 -> " in line
        assert "would redo calibrate, score, search, apply, eval, export" in line
        assert "use a new -p" in line and "--force" in line
    target = invoke("apply", "-p", project, "-r", work / "shortgpt.yaml", "--set", "target.blocks=1")
    assert target.exit_code == 2
    assert "(target.blocks 2 -> 1): this recipe would redo search, apply, eval, export" \
        in " ".join(target.output.split())
    assert tree(project, folders=False) == before  # nothing pinned, nothing moved


def test_force_keeps_the_replaced_results_byte_for_byte_and_gc_removes_them(work):
    project = work / "runs" / "sg"
    before = tree(project, skip="history", folders=False)
    state = json.loads((project / "state.json").read_text())["steps"]
    result = invoke("run", "-p", project, "-r", work / "manual.yaml", "--force", "--quiet")
    assert result.exit_code == 0, result.output
    entry = project / "history" / f"apply-{state['apply']['fingerprint'][:12]}"
    assert f"apply: its previous result (pruned) is kept in {entry}" in " ".join(result.output.split())
    kept = tree(entry, folders=False)
    assert kept.pop("record.json")
    assert kept == {k: v for k, v in before.items() if k.startswith("pruned/")}
    assert tree(project / "pruned", folders=False) != {k.removeprefix("pruned/"): v for k, v in kept.items()}
    for step in ("calibrate", "score", "search", "eval", "export"):
        folder = project / "history" / f"{step}-{state[step]['fingerprint'][:12]}"
        assert {k: v for k, v in before.items() if k in state[step]["files"]} == \
            {k: v for k, v in tree(folder, folders=False).items() if k != "record.json"}

    rows = json.loads(invoke("status", "-p", project, "--json").stdout)
    listed = {r["entry"]: r for r in rows if r["step"] == "history"}
    assert listed[entry.relative_to(project).as_posix()]["of"] == "apply"
    assert len(listed) == 6
    assert "kept earlier results" in invoke("status", "-p", project).stdout

    current = tree(project, skip="history", folders=False)
    kept_one = invoke("gc", "-p", project, "--keep-last", "1", "--json")
    assert kept_one.exit_code == 0 and json.loads(kept_one.stdout)["removed"] == []
    removed = invoke("gc", "-p", project, "--json")
    assert removed.exit_code == 0, removed.output
    assert len(json.loads(removed.stdout)["removed"]) == 6
    assert not any((project / "history").iterdir())
    assert tree(project, skip="history", folders=False) == current  # gc touches nothing but history/


def test_a_step_flag_that_replaces_an_output_keeps_the_old_one(work):
    project = work / "runs" / "sg"
    pruned = tree(project / "pruned", folders=False)
    fingerprint = json.loads((project / "state.json").read_text())["steps"]["apply"]["fingerprint"]
    result = invoke("apply", "-p", project, "--blocks", "1", "--quiet")
    assert result.exit_code == 0, result.output
    entry = project / "history" / f"apply-{fingerprint[:12]}"
    assert str(entry) in " ".join(result.output.split())  # said even with --quiet
    assert tree(entry / "pruned", folders=False) == pruned != tree(project / "pruned", folders=False)
    again = invoke("apply", "-p", project, "--blocks", "2", "--quiet")
    assert again.exit_code == 0, again.output
    assert len(list((project / "history").iterdir())) == 2
    # a keep-last setting in the recipe trims the step's entries, newest kept
    replaced = tree(project / "pruned", folders=False)
    trim = invoke("apply", "-p", project, "--blocks", "1", "--set", "execution.keep_history=1", "--quiet")
    assert trim.exit_code == 0, trim.output
    (left,) = (project / "history").iterdir()
    assert json.loads((left / "record.json").read_text())["summary"]["options"] == {"blocks": 2}
    assert tree(left / "pruned", folders=False) == replaced


def test_gc_refuses_a_folder_that_is_no_project(tmp_path):
    result = invoke("gc", "-p", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "is not a prunectl project" in result.output
