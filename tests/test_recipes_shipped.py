"""Every shipped recipe validates and opens with the command that runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunectl.recipe.load import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_documents_its_command(path, tmp_path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    # a placeholder the documented command replaces (the demo's GGUF file) is given here too
    sets = [f"model.path={tmp_path}"] if any("--set model.path=" in line for line in header) else []
    recipe, resolved = load_recipe(path, sets)
    assert resolved["model"]["path"]
    assert recipe.method.name
    assert any(f"recipes/{path.name}" in line or "scripts/demo.sh" in line for line in header)


def test_the_best_recipe_opens_with_its_command_and_states_its_measured_cpu_time(tmp_path):
    path = Path(__file__).parent.parent / "recipes" / "smollm2-best.yaml"
    header = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    assert header[0] == ("prunectl run -p runs/smollm2-best -r recipes/smollm2-best.yaml "
                         "--set model.path=<file.gguf>")
    assert any(re.search(r"Measured end to end .*", line) for line in header)
    assert any(re.search(r"\b[\d,]+ CPU-s in all\b", line) for line in header)
    recipe, _ = load_recipe(path, [f"model.path={tmp_path}"])
    assert (recipe.method.name, recipe.recover.mode, recipe.recover.objective) == (
        "puzzle", "full", "kd+lm")
