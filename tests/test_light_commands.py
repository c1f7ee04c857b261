"""Light commands stay light: ``status``, ``recipes``, ``compare``, ``report`` from saved results,
``--help``, and every refusal of a recipe that cannot be parsed or validated import neither torch
nor transformers (seconds to a minute on a busy machine).  Each runs in a fresh interpreter, the
only way to see what a command imports."""

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

REPO = Path(__file__).parent.parent
#: the CLI in-process, then which heavy modules it imported, as the last line
PROBE = """\
import json, sys
from prunectl.cli import app
code = 0
try:
    app(sys.argv[1:], prog_name="prunectl")
except SystemExit as stop:
    code = stop.code or 0
print(json.dumps({"code": code, "heavy": sorted(
    m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def probe(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "stdout": done.stdout, "stderr": done.stderr}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A project whose every step finished, with its report written."""
    root = tmp_path_factory.mktemp("light")
    model_dir = save_tiny(root / "tiny")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: " + "some words to read again. " * 20
                                for i in range(40)))
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 2, "seqlen": 32},
        "method": {"name": "manual", "remove": ["layers.1"]},
        "eval": {"perplexity": {"datasets": [str(text)], "seqlen": 64, "batch_size": 2,
                                "max_windows": 2}},
        "export": {"dtype": "float32"}}))
    runner = CliRunner()
    project = str(root / "proj")
    for args in (["run", "-p", project, "-r", str(recipe), "-q"], ["report", "-p", project]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return root


READING = [["status", "-p", "proj"], ["status", "-p", "proj", "--json"],
           ["compare", "proj", "proj"], ["report", "-p", "proj"], ["recipes", "ls"],
           ["recipes", "show", "llama2-7b-shortgpt"], ["--help"], ["run", "--help"]]


@pytest.mark.parametrize("args", READING, ids=[" ".join(a) for a in READING])
def test_reading_commands_import_no_torch(finished, args):
    result = probe(*args, cwd=finished)
    assert result["code"] == 0, result
    assert result["heavy"] == [], result


def test_status_reads_the_flags_the_last_command_left_and_they_match(finished):
    """The remembered flags are what a full computation gives; a recipe changed since makes
    status compute them again (importing what it needs)."""
    from prunectl.project.state import Project
    from prunectl.steps.sequence import stale_flags

    light = probe("status", "-p", "proj", "--json", cwd=finished)
    rows = {row["step"]: row for row in json.loads(light["stdout"].splitlines()[0])}
    expected = stale_flags(Project(finished / "proj"))
    assert {step: rows[step]["stale"] for step in expected} == expected
    assert not any(expected.values())


@pytest.mark.parametrize(("recipe", "extra", "message"), [
    ("model: {path: x\nmethod: [\n", [], "malformed YAML at line 2"),
    ("model: {path: gpt2}\nmethod: {name: flap}\nbogus: 1\n", [], "bogus: unknown key"),
    ("model: {path: ./nowhere}\nmethod: {name: flap}\n", [], "model.path: ./nowhere does not exist"),
    ("model: {path: gpt2}\nmethod: {name: flapp}\n", [], "unknown method 'flapp'"),
    ("model: {path: nobody/no-such-model}\nmethod: {name: flap}\n", [],
     "cannot read its config.json from the hub (HF_HUB_OFFLINE is set)"),
], ids=["yaml", "unknown-key", "missing-path", "unknown-method", "offline-hub"])
def test_refusals_come_before_torch(tmp_path, recipe, extra, message):
    (tmp_path / "r.yaml").write_text(recipe)
    commands = [["validate", "-r", "r.yaml"]]
    if "hub" not in message:  # the hub is read by validate; a step reads the weights later
        commands.append(["run", "-p", "proj", "-r", "r.yaml", *extra])
    for args in commands:
        result = probe(*args, cwd=tmp_path)
        assert result["code"] == 2, result
        assert message in result["stderr"] and len(result["stderr"].strip().splitlines()) == 1
        assert result["heavy"] == [], result
    assert not (tmp_path / "proj").exists()
