"""``magnitude``: group-L2 importance against a direct computation, a uniform plan, and a result
that loads with plain ``from_pretrained`` (no remote code) and reproduces the in-memory logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import byte_tokenizer, tiny_model
from transformers import AutoModelForCausalLM

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.magnitude import group_importance, kept_count
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model


def inputs_for(model, ratio=None):
    return Inputs(model, target=Target(params_ratio=ratio))


def sq(v):
    return float(v.detach().double().pow(2).sum())


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma2"])
def test_group_importance_matches_direct_sums(family):
    model = tiny_model(family, tie_word_embeddings=True)
    a = Adapter(model)
    scores = group_importance(a)
    hd, n_layers = a.head_dim, a.num_layers
    for c in (0, 17, 63):
        total = sq(model.lm_head.weight[:, c])
        for i in range(n_layers):
            att, mlp = a.attention_weights(i), a.mlp_weights(i)
            total += sum(sq(w[:, c]) for w in (att.q, att.k, att.v, mlp.gate, mlp.up))
            total += sq(att.o[c]) + sq(mlp.down[c])
        assert scores["hidden"][c].item() == pytest.approx(total / (7 * n_layers + 1), rel=1e-5)
    att, mlp = a.attention_weights(1), a.mlp_weights(1)
    for h in range(a.num_heads(1)):
        rows = range(h * hd, (h + 1) * hd)
        direct = sum(sq(att.q[r]) + sq(att.o[:, r]) for r in rows) / 2 / hd
        assert scores["layers.1.heads"][h].item() == pytest.approx(direct, rel=1e-5)
    for ch in (0, 50, 95):
        direct = (sq(mlp.gate[ch]) + sq(mlp.up[ch]) + sq(mlp.down[:, ch])) / 3
        assert scores["layers.1.channels"][ch].item() == pytest.approx(direct, rel=1e-5)


def test_kept_counts_round_to_multiples():
    assert kept_count(96, 0.0, 4) == 96
    assert kept_count(96, 0.3, 4) == 68  # 96 - 28 = 68
    assert kept_count(64, 0.3, 12) == 48  # 64 - 19 = 45 -> 48
    assert kept_count(64, 0.99, 12) == 12  # at least one multiple
    assert kept_count(66, 0.05, 4) == 64  # 63 -> 64, the largest multiple in n
    assert kept_count(66, 0.01, 4) == 66  # nothing removed: unchanged


@pytest.mark.parametrize(("family", "head_unit"), [("llama", "kv_group"), ("qwen2", "query_head"),
                                                   ("phi3", "kv_group"), ("gemma3_text", "kv_group")])
def test_result_is_uniform_and_loads_with_plain_from_pretrained(tmp_path, family, head_unit):
    model = tiny_model(family, num_attention_heads=8, num_key_value_heads=4,
                       tie_word_embeddings=True)
    method = create_method(parse_method_config(
        {"name": "magnitude", "head_unit": head_unit, "pruning_ratio": 0.5}))
    inputs = inputs_for(model)
    scores = method.score(inputs, {})
    plan = method.search(inputs, scores)
    dense_total = count_parameters(model)["total"]
    # uniform: every layer keeps the same counts, and the weakest hidden channels went
    def size(kept, dense):
        return dense if kept is None else len(kept)

    kept = {(size(lp.q_heads, 8), size(lp.kv_heads, 4), size(lp.mlp_channels, 96))
            for lp in plan.layers.values()}
    assert len(plan.layers) == 4 and len(kept) == 1
    q, kv, channels = kept.pop()
    assert q % kv == 0 and q < 8 and (kv == 4 if head_unit == "query_head" else q == 2 * kv)
    gone = set(range(64)) - set(plan.hidden_channels)
    assert max(scores["hidden"][list(gone)]) <= min(scores["hidden"][plan.hidden_channels])
    pruned = method.apply(inputs, plan, {})
    assert dense_total - count_parameters(pruned)["total"] == plan.achieved["params_removed"]
    assert pruned.lm_head.weight is pruned.get_input_embeddings().weight  # still tied
    save_model(pruned, byte_tokenizer(), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and not (tmp_path / "out" / "modeling_prunectl.py").exists()
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["intermediate_size"]) == (len(plan.hidden_channels), q, kv, channels)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded).__name__ == type(pruned).__name__ and reloaded.config.tie_word_embeddings
    tokens = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, pruned(tokens).logits)


@pytest.mark.parametrize("target", [0.2, 0.45])
def test_target_ratio_is_solved_to_the_closest_uniform_ratio(target):
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=4)
    method = create_method(parse_method_config({"name": "magnitude"}))
    plan = method.search(inputs_for(model, target), method.score(inputs_for(model), {}))
    achieved = plan.achieved["params_ratio"]
    # no other ratio on the grid comes closer (checked on fresh plans with explicit ratios)
    for other in (plan.achieved["pruning_ratio"] - 0.05, plan.achieved["pruning_ratio"] + 0.05):
        explicit = create_method(parse_method_config({"name": "magnitude", "pruning_ratio": other}))
        alt = explicit.search(inputs_for(model), explicit.score(inputs_for(model), {}))
        assert abs(achieved - target) <= abs(alt.achieved["params_ratio"] - target)
    # hidden 64 moves in multiples of lcm(4, heads): coarse on a tiny model, and said so
    assert any(f"for target {target}" in n for n in plan.notes) == (abs(achieved - target) > 0.005)
    pruned = method.apply(inputs_for(model), plan, {})
    assert plan.achieved["params_total"] - count_parameters(pruned)["total"] == (
        plan.achieved["params_removed"])


def test_explicit_ratio_and_missing_target():
    model = tiny_model("llama")
    method = create_method(parse_method_config({"name": "magnitude", "pruning_ratio": 0.5}))
    plan = method.search(inputs_for(model), method.score(inputs_for(model), {}))
    assert plan.achieved["pruning_ratio"] == 0.5 and plan.achieved["target_params_ratio"] is None
    assert plan.achieved["hidden_size"] == 32 and plan.achieved["intermediate_size"] == 48
    default = create_method(parse_method_config({"name": "torch-pruning"}))
    with pytest.raises(UserError, match="needs method.pruning_ratio or target.params_ratio"):
        default.search(inputs_for(copy.deepcopy(model)), {})
