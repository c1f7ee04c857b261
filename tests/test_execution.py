"""Large-model execution paths on a tiny model: layer-wise streaming, device maps, memory checks."""

from __future__ import annotations

import json

import pytest
from helpers import invoke, manual_recipe

from prunectl import memory_estimate

BLOCK = {"name": "block", "block_type": "mix"}


def search(tmp_path, model_dir, text, name, *extra):
    recipe = manual_recipe(tmp_path / f"{name}.yaml", model_dir, text, method=BLOCK,
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
    monkeypatch.setattr(memory_estimate, "available", lambda device: (None, 1024))
    recipe = manual_recipe(tmp_path / "r.yaml", tiny_model_dir, text_file, method=BLOCK,
                           target={"blocks": 1})
    project = tmp_path / "p"
    result = invoke("search", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 2
    assert "calibrate needs about" in result.stderr and "host memory" in result.stderr
    assert not (project / "calibration" / "tokens.safetensors").exists()


def test_estimate_counts_weights_exactly(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunectl.recipe.load import load_recipe

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    recipe, _ = load_recipe(None, [], pinned={"model": {"path": str(tiny_model_dir)},
                                                 "method": {"name": "manual"}})
    import torch

    need = memory_estimate.estimate("calibrate", config, recipe, torch.float32)
    assert need.parts["weights"] == sum(p.numel() for p in model.parameters()) * 4


def test_streaming_hooks_cover_every_weight_and_fire_on_the_adapter_path(monkeypatch):
    """On a GPU each piece must reach the device before it runs, however it is called."""
    import torch
    from helpers import tiny_model

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


def test_streamed_models_compute_on_the_streaming_device():
    """Inputs, caches and activations go to the streaming device, not to where the weights
    wait; recording it needs no GPU (nothing runs here)."""
    import torch
    from helpers import tiny_model

    from prunectl.modeling.placement import execution_device, is_streamed, stream_layers

    model = tiny_model("llama")
    assert execution_device(model) == torch.device("cpu") and not is_streamed(model)
    stream_layers(model, torch.device("cuda", 0))
    assert execution_device(model) == torch.device("cuda", 0) and is_streamed(model)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_taylor_gradients_refuse_layerwise_streaming(tmp_path, tiny_model_dir, text_file):
    recipe = manual_recipe(tmp_path / "r.yaml", tiny_model_dir, text_file,
                           method={"name": "taylor", "layer_start": 1, "layer_end": 3},
                          target={"params_ratio": 0.2})
    project = tmp_path / "p"
    assert invoke("calibrate", "-p", project, "-r", recipe, "--quiet").exit_code == 0
    result = invoke("score", "-p", project, "-r", recipe, "--quiet",
                    "--set", "execution.mode=layerwise")
    assert result.exit_code == 2, result.output
    assert "needs gradients through the whole model" in result.stderr
    assert "model.device_map: auto" in result.stderr
    assert not (project / "scores" / "scores.safetensors").exists()


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_layerwise_search_on_cuda_equals_the_whole_model(tmp_path, tiny_model_dir, text_file):
    whole = search(tmp_path, tiny_model_dir, text_file, "whole", "--device", "cuda")
    layerwise = search(tmp_path, tiny_model_dir, text_file, "layerwise", "--device", "cuda",
                       "--set", "execution.mode=layerwise")
    assert layerwise["removal_order"] == whole["removal_order"]
    for a, b in zip(layerwise["curve"], whole["curve"]):
        assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-4)


def test_disk_cache_through_the_cli_gives_the_same_search(tmp_path, tiny_model_dir, text_file):
    whole = search(tmp_path, tiny_model_dir, text_file, "memory")
    disk = search(tmp_path, tiny_model_dir, text_file, "disk", "--set", "method.cache=disk")
    assert disk["removal_order"] == whole["removal_order"]
    assert [p["perplexity"] for p in disk["curve"]] == [p["perplexity"] for p in whole["curve"]]
    assert list((tmp_path / "disk" / "search" / "cache" / "rank-0").iterdir()) == []


def test_a_step_over_the_memory_budget_is_refused_before_it_starts(tmp_path, tiny_model_dir,
                                                                   text_file):
    """The tiny model's weights alone are over 0.0002 GiB (its layers 0.000115 each, the
    preflight's floor): calibrate is refused."""
    recipe = manual_recipe(tmp_path / "r.yaml", tiny_model_dir, text_file, method=BLOCK,
                           target={"blocks": 1})
    project = tmp_path / "p"
    result = invoke("calibrate", "-p", project, "-r", recipe, "--quiet",
                    "--set", "execution.memory_budget_gb=0.0002")
    assert result.exit_code == 2
    assert "more than execution.memory_budget_gb=0.0002 allows" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "calibration" / "tokens.safetensors").exists()
