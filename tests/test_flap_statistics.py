"""Streaming moments and the layer-wise calibration pass against direct torch computations."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from prunectl.methods.width.collect import collect_statistics
from prunectl.methods.width.statistics import RunningMoments
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.layers import Layers


def test_streaming_moments_equal_one_shot_even_with_a_large_offset():
    torch.manual_seed(0)
    x = torch.randn(1000, 7, dtype=torch.float64) * 3 + 1e4  # naive sum-of-squares would cancel
    x[1:14] = x[1:14].float().double()  # this batch is fed in float32
    moments = RunningMoments(7)
    start = 0
    for size in (1, 13, 200, 0, 386, 400):  # uneven batches, one empty
        chunk = x[start : start + size]
        moments.update(chunk.float() if size == 13 else chunk)
        start += size
    assert moments.count == 1000
    torch.testing.assert_close(moments.mean, x.mean(0))
    torch.testing.assert_close(moments.var, x.var(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(moments.sumsq, x.pow(2).sum(0))
    saved = moments.as_dict("layers.0.o_proj")
    assert set(saved) == {f"layers.0.o_proj.{k}" for k in ("count", "mean", "var", "sumsq")}
    assert saved["layers.0.o_proj.count"].item() == 1000


def captured_inputs(model, tokens):
    """o_proj / down_proj inputs of every layer from one ordinary forward, with plain hooks."""
    adapter = Adapter(model)
    seen, handles = {}, []
    for i in range(adapter.num_layers):
        for name in ("o_proj", "down_proj"):
            module = getattr(adapter, name)(i)
            key = f"layers.{i}.{name}"
            handles.append(module.register_forward_hook(
                lambda _m, args, _out, key=key: seen.__setitem__(key, args[0].detach().clone())))
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return {k: v.reshape(-1, v.shape[-1]).double() for k, v in seen.items()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma3_text"])
def test_layerwise_statistics_match_captured_activations(family):
    model = tiny_model(family)
    tokens = torch.randint(4, 260, (5, 16), generator=torch.Generator().manual_seed(1))
    stats = collect_statistics(Layers(Adapter(model), tokens, batch_size=2))  # batches 2, 2, 1
    direct = captured_inputs(model, tokens)
    assert len(stats) == 4 * len(direct)
    for key, x in direct.items():
        assert stats[f"{key}.count"].item() == x.shape[0]
        torch.testing.assert_close(stats[f"{key}.mean"], x.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats[f"{key}.var"], x.var(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats[f"{key}.sumsq"], x.pow(2).sum(0), rtol=1e-4, atol=1e-5)


def test_statistics_of_a_streamed_model_equal_the_whole_models():
    """With execution.mode layerwise the layer inputs wait in host memory between layers."""
    from prunectl.modeling.placement import stream_layers

    tokens = torch.randint(4, 260, (5, 16), generator=torch.Generator().manual_seed(2))
    whole = collect_statistics(Layers(Adapter(tiny_model("llama", seed=3)), tokens, batch_size=2))
    streamed_model = stream_layers(tiny_model("llama", seed=3), torch.device("cpu"))
    streamed = collect_statistics(Layers(Adapter(streamed_model), tokens, batch_size=2))
    assert streamed.keys() == whole.keys()
    for key, value in whole.items():
        assert torch.equal(streamed[key], value), key
