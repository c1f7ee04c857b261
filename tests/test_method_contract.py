"""The method contract: the calibration kind a config asks for, the target check, the step's
journal, and the layer pipeline's streams against transformers' own forward."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import layer_states, tiny_model

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Journal, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import LayerPass
from prunectl.recipe.sections import TargetConfig


def method(**section):
    return create_method(parse_method_config(section))


@pytest.mark.parametrize(("section", "kind"), [
    ({"name": "manual"}, "none"),
    ({"name": "mag-sp"}, "none"),
    ({"name": "mag-sp", "reconstruct": "least_squares"}, "layer_inputs"),
    ({"name": "magnitude", "reconstruct": "bias"}, "layer_inputs"),
    ({"name": "flap"}, "layer_inputs"),
    ({"name": "shortgpt"}, "layer_inputs"),
    ({"name": "block"}, "tokens"),
    ({"name": "taylor"}, "gradients"),
    ({"name": "taylor", "importance": "l2"}, "tokens"),
])
def test_the_config_decides_the_calibration_kind(section, kind):
    assert method(**section).calibration == kind


@pytest.mark.parametrize(("keys", "kind"), [
    ({"blocks": 4}, "blocks"), ({"params_ratio": 0.2}, "params"), ({"params": 1000}, "params"),
    ({"params_ratio": 0.2, "ratio_of": "units"}, "units"), ({"experts_ratio": 0.5}, "experts"),
    ({}, "none"),
])
def test_target_kind_reads_the_recipe_section(keys, kind):
    assert Target.of(TargetConfig(**keys)).kind == kind


def test_a_kind_the_method_cannot_meet_is_refused_naming_what_it_takes():
    with pytest.raises(UserError, match=r"method flap cannot meet target\.blocks \(--blocks N\); "
                                        r"give target\.params_ratio .* or target\.ratio_of: units"):
        Target(blocks=3).check(method(name="flap"))
    with pytest.raises(UserError, match="method shortgpt cannot meet target.ratio_of: units"):
        Target(params_ratio=0.2, ratio_of="units").check(method(name="shortgpt"))
    for ok in (Target(), Target(params_ratio=0.2)):  # none: the method may carry its own amount
        assert ok.check(method(name="magnitude")) is ok


def test_journal_appends_and_reads_back_and_without_a_directory_keeps_nothing(tmp_path):
    journal = Journal(tmp_path / "search", key="k")
    assert journal.records() == []
    journal.append({"step": 1, "removed": "layers.0.mlp"})
    journal.append({"step": 2, "removed": "layers.3.attn"})
    lines = (tmp_path / "search" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == journal.records()
    assert [r["step"] for r in journal.records()] == [1, 2]
    Journal().append({"step": 1})
    assert Journal().records() == [] and list(tmp_path.iterdir()) == [tmp_path / "search"]


def test_least_squares_without_tokens_is_a_user_error():
    model = tiny_model("llama")
    magsp = method(name="mag-sp", reconstruct="least_squares")
    inputs = Inputs(model, target=Target(params_ratio=0.2))
    plan = magsp.search(inputs, magsp.score(inputs, {}))
    with pytest.raises(UserError, match="least_squares needs calibration tokens; run "
                                        "`prunectl calibrate` first"):
        magsp.apply(inputs, plan, {})


def test_a_second_stream_runs_block_by_block_and_leaves_the_first_alone():
    """Stream 0 advances whole layers, stream 1 runs attention then MLP through ``map``: both
    end at every layer's output of the model's own forward; a step on stream 1 alone never
    touches stream 0."""
    model = tiny_model("llama", seed=7)
    adapter = Adapter(model)
    ids = torch.randint(4, 260, (5, 12), generator=torch.Generator().manual_seed(7))
    direct = layer_states(model, ids)
    with torch.inference_mode():
        layers = LayerPass(adapter, ids, batch_size=2, streams=2)
        assert len(layers.streams) == 2 and len(layers.hidden) == 3
        for i in range(adapter.num_layers):
            before = [h.clone() for h in layers.streams[0]]
            layers.map(lambda _b, xs, i=i: [adapter.attention_block(
                i, xs[0], adapter.block_inputs(xs[0]))], streams=(1,))
            layers.map(lambda _b, xs, i=i: [adapter.mlp_block(i, xs[0])], streams=(1,))
            assert all(torch.equal(a, b) for a, b in zip(before, layers.streams[0], strict=True))
            layers.advance(i)
            for stream in layers.streams:
                torch.testing.assert_close(torch.cat(stream), direct[i + 1], rtol=1e-5, atol=1e-5)
