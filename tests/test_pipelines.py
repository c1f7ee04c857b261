"""A method's ``calibration`` selects a registered pipeline, and the steps ask that pipeline
instead of comparing the kind with a string."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import torch

import prunectl
from prunectl.methods.inputs import Calibration
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.pipelines.registry import PIPELINES


def test_every_kind_has_a_pipeline_and_methods_select_theirs():
    assert set(PIPELINES) == set(get_args(Calibration))
    data_free = create_method(parse_method_config({"name": "mag-sp"}))
    assert data_free.pipeline is PIPELINES["none"]
    calls = []
    empty = data_free.pipeline.tokens(lambda: calls.append(1))
    assert calls == [] and empty.shape == (0, 0) and empty.dtype == torch.long
    refit = create_method(parse_method_config({"name": "mag-sp", "reconstruct": "bias"}))
    assert refit.pipeline is PIPELINES["layer_inputs"]
    windows = torch.ones(2, 3, dtype=torch.long)
    assert refit.pipeline.tokens(lambda: windows) is windows
    assert create_method(parse_method_config({"name": "taylor"})).pipeline.kind == "gradients"


def _kind_comparisons(source: str) -> list[int]:
    """Lines comparing ``<x>.calibration`` with a string."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Compare)
            and any(isinstance(side, ast.Attribute) and side.attr == "calibration"
                    for side in [node.left, *node.comparators])
            and any(isinstance(side, ast.Constant) and isinstance(side.value, str)
                    for side in [node.left, *node.comparators])]


def test_no_step_tests_a_calibration_kind_by_name():
    root = Path(prunectl.__file__).parent
    found = {str(file.relative_to(root)): lines for file in [*root.glob("steps/*.py"),
                                                             root / "recipe" / "preflight.py"]
             if (lines := _kind_comparisons(file.read_text()))}
    assert found == {}
    assert _kind_comparisons('if method.calibration != "none":\n    pass\n') == [1]
