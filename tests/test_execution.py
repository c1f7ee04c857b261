"""Large-model execution paths on a tiny model: layer-wise streaming, device maps, memory checks."""

from __future__ import annotations

import json

import pytest
from test_cli_pipeline import invoke, write_recipe

from prunectl import resources

BLOCK = {"name": "block", "block_type": "mix"}


def search(tmp_path, model_dir, text, name, *extra):
    recipe = write_recipe(tmp_path / f"{name}.yaml", model_dir, text, method=BLOCK,
                          target={"blocks": 3})
    project = tmp_path / name
    result = invoke("search", "-p", project, "-r", recipe, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((project / "search" / "plan.json").read_text())


def test_layerwise_and_device_map_give_the_whole_model_result(tmp_path, tiny_model_dir, text_file):
    whole = search(tmp_path, tiny_model_dir, text_file, "whole")
    layerwise = search(tmp_path, tiny_model_dir, text_file, "layerwise",
                       "--set", "execution.mode=layerwise")
    mapped = search(tmp_path, tiny_model_dir, text_file, "mapped",
                    "--set", "model.device_map={'': cpu}")
    assert layerwise["removal_order"] == whole["removal_order"] == mapped["removal_order"]
    for other in (layerwise, mapped):
        for a, b in zip(other["curve"], whole["curve"]):
            assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)


def test_a_step_that_cannot_fit_is_refused_before_it_starts(tmp_path, tiny_model_dir, text_file,
                                                            monkeypatch):
    monkeypatch.setattr(resources, "available", lambda device: (None, 1024))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, text_file, method=BLOCK,
                          target={"blocks": 1})
    project = tmp_path / "p"
    result = invoke("search", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 2
    assert "calibrate needs about" in result.stderr and "host memory" in result.stderr
    assert not (project / "calibration" / "tokens.safetensors").exists()


def test_estimate_counts_weights_exactly(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunectl.recipe import load_recipe

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    recipe, _ = load_recipe(None, [], pinned={"model": {"path": str(tiny_model_dir)},
                                                 "method": {"name": "manual"}})
    import torch

    need = resources.estimate("calibrate", config, recipe, torch.float32)
    assert need.parts["weights"] == sum(p.numel() for p in model.parameters()) * 4


def test_streaming_hooks_cover_every_weight_and_fire_on_the_adapter_path(monkeypatch):
    """On a GPU each piece must reach the device before it runs, however it is called."""
    import torch
    from conftest import tiny_model

    from prunectl.modeling import placement
    from prunectl.modeling.adapters import Adapter

    moved: list[torch.nn.Module] = []
    original = placement._to_device

    def recording(device):
        hook = original(device)

        def wrapper(module, args, kwargs):
            moved.append(module)
            return hook(module, args, kwargs)

        return wrapper

    monkeypatch.setattr(placement, "_to_device", recording)
    model = tiny_model("llama")
    covered = {id(p) for piece in placement.pieces(model) for p in piece.parameters()}
    assert covered == {id(p) for p in model.parameters()}

    placement.stream_layers(model, torch.device("cpu"))
    adapter = Adapter(model)
    with torch.inference_mode():
        hidden = adapter.embed_tokens(torch.randint(4, 260, (1, 8)))
        inputs = adapter.block_inputs(hidden)
        for i in range(adapter.num_layers):
            hidden = adapter.layer_forward(i, hidden, inputs)
        adapter.logits(hidden)
    with_weights = [p for p in placement.pieces(model) if any(True for _ in p.parameters())]
    assert all(any(m is piece for m in moved) for piece in with_weights)
