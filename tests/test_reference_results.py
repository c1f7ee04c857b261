"""Refactorings keep results bit for bit: every search method's plan, pruned weights (a sha256
per tensor), apply summary and perplexity on tiny models equal the file saved from the tree
before the redesign (``scripts/reference_results.py`` made it and regenerates it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reference_results.py"


def _script():
    spec = importlib.util.spec_from_file_location("reference_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_equal_the_saved_reference():
    script = _script()
    expected = json.loads(script.FIXTURE.read_text())
    versions = script.versions()
    if versions != expected["versions"]:
        pytest.skip(f"reference made with {expected['versions']}, running {versions}: "
                    "regenerate it from an untouched tree to compare")
    got = script.collect()
    assert set(got["cases"]) == set(expected["cases"])
    assert script.differences(expected, got) == []


def test_differences_names_each_changed_leaf():
    script = _script()
    old = {"cases": {"flap": {"weights": {"a": "x", "b": "y"}, "perplexity": 1.5}}}
    new = {"cases": {"flap": {"weights": {"a": "x", "c": "y"}, "perplexity": 1.5000000001}}}
    assert script.differences(old, new) == [
        "/cases/flap/perplexity: 1.5 != 1.5000000001",
        "/cases/flap/weights/b: missing", "/cases/flap/weights/c: extra"]
