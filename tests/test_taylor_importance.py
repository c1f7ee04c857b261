"""Taylor / magnitude importance against a direct computation from gradients captured in the test."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.taylor import TaylorConfig, TaylorMethod

D = 16  # head_dim of the tiny models (hidden 64, 4 heads)


def tokens(n=4, seq=16, seed=0):
    return torch.randint(4, 260, (n, seq), generator=torch.Generator().manual_seed(seed))


def direct_grads(model, x, weights):
    """Mean gradient and mean squared per-sample gradient, one plain autograd call per sample."""
    g = [torch.zeros_like(w) for w in weights]
    f = [torch.zeros_like(w) for w in weights]
    for row in x:
        loss = model(input_ids=row[None], labels=row[None]).loss
        for acc, sq, grad in zip(g, f, torch.autograd.grad(loss, weights)):
            acc += grad / len(x)
            sq += grad * grad / len(x)
    return g, f


def layer_weights(model, i):
    a, m = model.model.layers[i].self_attn, model.model.layers[i].mlp
    return [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
            m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight]


def scores_for(model, x, **cfg):
    method = TaylorMethod(TaylorConfig(layer_start=1, layer_end=3, **cfg))
    return method.score(Inputs(model, x, target=Target(params_ratio=0.2)), {})


def test_element1_query_heads_and_vector_channels_match_direct():
    model, x = tiny_model("llama"), tokens()
    (gq, _, _, go, gg, gu, gd), _ = direct_grads(model, x, layer_weights(model, 2))
    q, _, _, o, gate, up, down = layer_weights(model, 2)
    s = scores_for(model, x)
    expected = torch.stack([
        (q * gq)[h * D:(h + 1) * D].abs().sum() + (o * go)[:, h * D:(h + 1) * D].abs().sum()
        for h in range(4)
    ])
    torch.testing.assert_close(s["layers.2.heads"], expected.detach(), rtol=1e-4, atol=1e-9)

    v = scores_for(model, x, importance="vector")
    channels = (gate * gg).sum(1).abs() + (up * gu).sum(1).abs() + (down * gd).sum(0).abs()
    torch.testing.assert_close(v["layers.2.channels"], channels.detach(), rtol=1e-4, atol=1e-9)


def test_element2_kv_groups_use_the_fisher_term():
    model, x = tiny_model("llama"), tokens()
    weights = layer_weights(model, 1)
    grads, fisher = direct_grads(model, x, weights)
    sal = [(w * g - 0.5 * w * f * w).abs() for w, g, f in zip(weights, grads, fisher)]
    s = scores_for(model, x, importance="element2", head_unit="kv_group")
    expected = torch.stack([
        sal[0][2 * g * D:(2 * g + 2) * D].sum() + sal[1][g * D:(g + 1) * D].sum()
        + sal[2][g * D:(g + 1) * D].sum() + sal[3][:, 2 * g * D:(2 * g + 2) * D].sum()
        for g in range(2)
    ])
    torch.testing.assert_close(s["layers.1.heads"], expected.detach(), rtol=1e-4, atol=1e-9)


def test_max_aggregation_reduces_per_position_then_sums_the_head():
    model, x = tiny_model("llama"), tokens()
    (gq, _, _, go, *_), _ = direct_grads(model, x, layer_weights(model, 1))
    q, _, _, o, *_ = layer_weights(model, 1)
    per_q = (q * gq).abs().sum(1).view(4, D)
    per_o = (o * go).abs().sum(0).view(4, D)
    s = scores_for(model, x, aggregation="max")
    torch.testing.assert_close(
        s["layers.1.heads"], torch.maximum(per_q, per_o).sum(1).detach(), rtol=1e-4, atol=1e-9
    )


def test_magnitude_baselines_need_no_gradients():
    model = tiny_model("llama")
    _, _, _, _, gate, up, down = layer_weights(model, 1)
    l2 = scores_for(model, torch.empty(0, 0, dtype=torch.long), importance="l2", aggregation="mean")
    expected = (gate.square().sum(1) + up.square().sum(1) + down.square().sum(0)) / 3
    torch.testing.assert_close(l2["layers.1.channels"], expected.detach(), rtol=1e-5, atol=0)
    q, k, v, o, *_ = layer_weights(model, 1)
    l1 = scores_for(model, torch.empty(0, 0, dtype=torch.long), importance="l1")
    head0 = q[:D].abs().sum() + o[:, :D].abs().sum()
    torch.testing.assert_close(l1["layers.1.heads"][0], head0.detach(), rtol=1e-5, atol=0)


def test_random_is_seeded():
    model = tiny_model("llama")
    empty = torch.empty(0, 0, dtype=torch.long)
    a, b = scores_for(model, empty, importance="random"), scores_for(model, empty, importance="random")
    c = scores_for(model, empty, importance="random", seed=7)
    assert torch.equal(a["layers.1.channels"], b["layers.1.channels"])
    assert not torch.equal(a["layers.1.channels"], c["layers.1.channels"])


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # Gemma 2: four norms per layer
def test_hidden_channels_touch_every_weight_and_norm(family):
    model, x = tiny_model(family, num_hidden_layers=2), tokens()
    params = [p for p in model.parameters()]
    grads, _ = direct_grads(model, x, params)
    expected = torch.zeros(64)
    offset = 1.0 if family == "gemma2" else 0.0  # Gemma's RMSNorm multiplies by 1 + weight
    for (name, p), g in zip(model.named_parameters(), grads):
        s = (p * g).abs()
        if p.dim() == 1:
            expected += ((p + offset) * g).abs()
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            expected += s.sum(1)
        else:  # embedding, lm_head and every projection reading the residual stream
            expected += s.sum(0)
    s = TaylorMethod(TaylorConfig(scope="channel")).score(Inputs(model, x), {})
    torch.testing.assert_close(s["hidden"], expected.detach(), rtol=1e-4, atol=1e-9)


def test_phi3_fused_projections_map_to_their_rows():
    model, x = tiny_model("phi3"), tokens()
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    weights = [attn.qkv_proj.weight, attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight]
    (gqkv, go, ggu, gd), _ = direct_grads(model, x, weights)
    s = scores_for(model, x, head_unit="kv_group")
    sal = (weights[0] * gqkv).abs().sum(1)  # rows: q (4 heads), k (2), v (2)
    so = (weights[1] * go).abs().sum(0)
    group1 = sal[2 * D:4 * D].sum() + sal[5 * D:6 * D].sum() + sal[7 * D:8 * D].sum() + so[2 * D:].sum()
    torch.testing.assert_close(s["layers.1.heads"][1], group1.detach(), rtol=1e-4, atol=1e-9)
    gu = (weights[2] * ggu).abs().sum(1)
    channels = gu[:96] + gu[96:] + (weights[3] * gd).abs().sum(0)
    torch.testing.assert_close(s["layers.1.channels"], channels.detach(), rtol=1e-4, atol=1e-9)


def test_micro_batches_and_checkpointing_give_the_same_scores_and_leave_the_model_clean():
    model, x = tiny_model("qwen2"), tokens(n=6)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    one = scores_for(model, x)
    three = scores_for(model, x, grad_batch_size=3, gradient_checkpointing=True)
    for key in one:
        torch.testing.assert_close(one[key], three[key], rtol=1e-4, atol=1e-9)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_gradient_importance_without_calibration_tokens_is_a_user_error():
    from prunectl.errors import UserError

    with pytest.raises(UserError, match="run `prunectl calibrate` first"):
        scores_for(tiny_model("llama"), torch.empty(0, 0, dtype=torch.long))
