"""Each scoring metric against a direct computation on captured o_proj / down_proj inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from test_flap_statistics import captured_inputs

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.adapters import Adapter


def z(x):
    return (x - x.mean()) / x.std()


def direct_channel_metric(metric, w, x):
    """Written out from the FLAP paper / reference formulas, on activations ``x`` [tokens, in]."""
    w = w.detach().double()
    if metric == "IFV":
        return x.var(0)
    if metric == "WIFV":
        return x.var(0) * (w * w).sum(0)
    if metric in ("WIFN", "wanda-sp"):
        norm = x.pow(2).sum(0).sqrt()
        return torch.stack([(w[:, j].abs() * norm[j]).mean() for j in range(w.shape[1])])
    return torch.stack([w[:, j].pow(2).sum().sqrt() for j in range(w.shape[1])])  # mag-sp


CASES = [
    ("flap", {"metric": "WIFV"}),
    ("flap", {"metric": "IFV"}),
    ("flap", {"metric": "WIFN"}),
    ("flap", {"metric": "WIFV", "structure": "UL-UM"}),
    ("wanda-sp", {}),
    ("mag-sp", {}),
    ("wanda-sp", {"structure": "AL-AM"}),
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_scores_match_direct_computation(family, name, options):
    model = tiny_model(family)
    tokens = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(2))
    method = create_method(parse_method_config({"name": name, **options}))
    inputs = Inputs(model, tokens, batch_size=3)
    stats = method.statistics(inputs) if method.uses_statistics else {}
    scores = method.score(inputs, stats)
    acts = captured_inputs(model, tokens)
    adapter = Adapter(model)
    metric = options.get("metric", name)
    adaptive = method.config.structure.startswith("AL")
    for i in range(adapter.num_layers):
        o_w, down_w = adapter.o_proj(i).weight, adapter.down_proj(i).weight
        attn = direct_channel_metric(metric, o_w, acts[f"layers.{i}.o_proj"])
        mlp = direct_channel_metric(metric, down_w, acts[f"layers.{i}.down_proj"])
        if name == "flap":
            attn = attn**2  # FLAP squares the attention metric
        if adaptive:
            heads = z(attn).reshape(adapter.num_heads(i), -1).mean(1)
            mlp = z(mlp)
        else:
            heads = attn.reshape(adapter.num_heads(i), -1).sum(1)
        close = {"rtol": 2e-3, "atol": 2e-4}
        torch.testing.assert_close(scores[f"layers.{i}.heads"].double(), heads, **close)
        torch.testing.assert_close(scores[f"layers.{i}.channels"].double(), mlp, **close)


def test_missing_statistics_is_a_user_error():
    model = tiny_model("llama")
    method = create_method(parse_method_config({"name": "flap"}))
    with pytest.raises(UserError, match=r"lack layers\.0\.o_proj\.var; re-run `prunectl calibrate"):
        method.score(Inputs(model), {})


def test_baselines_declare_what_calibration_they_need():
    assert create_method(parse_method_config({"name": "mag-sp"})).calibration == "none"
    assert create_method(parse_method_config({"name": "wanda-sp"})).uses_statistics is True
    assert parse_method_config({"name": "wanda_sp"}).bias_compensation is False
    assert parse_method_config({"name": "flap"}).bias_compensation is True
    with pytest.raises(ValueError, match="bias_compensation"):
        parse_method_config({"name": "mag-sp", "bias_compensation": True})
