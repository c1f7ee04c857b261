"""A method's ``calibration`` selects a registered pipeline, the steps ask that pipeline instead
of comparing the kind with a string, and the pipeline builds the passes a method gets in its
inputs."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from typing import get_args

import pytest
import torch
from helpers import invoke, save_tiny, tiny_model, write_recipe

import prunectl
from prunectl.errors import UserError
from prunectl.methods import registry
from prunectl.methods.base import Method
from prunectl.methods.inputs import Calibration, Inputs
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.pipelines.blocks.runner import UnitRunner, Units
from prunectl.pipelines.gradients import Gradients
from prunectl.pipelines.layers import Layers
from prunectl.pipelines.registry import BY_HAND, PIPELINES, PassNotProvided


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


def test_each_kind_hands_its_passes_and_refuses_the_others():
    """The pass objects behind ``inputs.layers`` / ``.units`` / ``.gradients`` run on the
    inputs' own windows; one the kind does not provide is a programming error naming the kinds
    that do, not a user error."""
    model = tiny_model("llama")
    tokens = torch.randint(4, 260, (3, 8), generator=torch.Generator().manual_seed(0))

    def inputs(kind):
        return Inputs(model, tokens, batch_size=2, calibration=kind)

    layers = inputs("layer_inputs").layers
    assert isinstance(layers, Layers) and layers.tokens is tokens and layers.batch_size == 2
    assert [h.shape[0] for h in layers.start(streams=2).streams[1]] == [2, 1]
    runner = inputs("tokens").units.runner(windows=2)
    assert isinstance(runner, UnitRunner) and [b.shape[0] for b in runner.batches] == [2]
    assert isinstance(inputs("gradients").gradients, Gradients)
    assert isinstance(inputs("tokens").layers, Layers)  # reconstruct refits of a tokens method
    assert isinstance(inputs("gradients").layers, Layers)
    refused = {kind: [name for name in ("layers", "units", "gradients")
                      if name not in PIPELINES[kind].passes] for kind in PIPELINES}
    assert refused == {"none": ["layers", "units", "gradients"],
                       "layer_inputs": ["units", "gradients"], "tokens": ["gradients"],
                       "gradients": ["units"]}
    for kind, names in refused.items():
        for name in names:
            with pytest.raises(PassNotProvided, match=f"calibration '{kind}' provides no") as error:
                getattr(inputs(kind), name)
            assert not isinstance(error.value, UserError)
    with pytest.raises(PassNotProvided, match="declares calibration tokens$"):
        _ = inputs("layer_inputs").units
    by_hand = Inputs(model, tokens, batch_size=2)  # tests and benches: every pass
    assert by_hand.pipeline is BY_HAND and isinstance(by_hand.units, Units)


def test_the_steps_hand_a_method_its_kind(tmp_path, text_file, monkeypatch):
    """Through ``calibrate`` and ``score``: the inputs carry the method's kind, so its hooks get
    that pipeline's passes, and a pass the kind lacks fails as an internal error (exit 1)."""
    seen = {}

    class Probe(Method):
        name = "probe"
        calibration = "layer_inputs"
        targets = frozenset({"params"})

        def score(self, inputs, stats):
            seen["kind"] = inputs.calibration
            seen["windows"] = inputs.layers.tokens.shape
            _ = inputs.units
            return {}

    module = types.ModuleType("probe_method")
    module.Probe = Probe
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.METHODS, "probe", "probe_method:Probe")
    model = save_tiny(tmp_path / "model")
    recipe = write_recipe(tmp_path / "r.yaml", model, text_file, method={"name": "probe"},
                          target={"params_ratio": 0.2})
    project = tmp_path / "p"
    assert invoke("calibrate", "-p", project, "-r", recipe, "--quiet").exit_code == 0
    result = invoke("score", "-p", project, "--quiet")
    assert seen == {"kind": "layer_inputs", "windows": (4, 32)}
    assert result.exit_code == 1  # internal, not the recipe's fault (that is exit 2)
    assert result.stderr.startswith("internal error: PassNotProvided: calibration 'layer_inputs' "
                                    "provides no block-unit runner (inputs.units)")
