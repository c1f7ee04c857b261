"""Mixture-of-experts families: adapters, expert removal, the pruned format, generation.

The independent reference for removing experts is the dense model whose routers never pick them:
their router logits are set to -inf before the softmax, so the softmax renormalises over the
remaining experts exactly as a router without those rows does, and top-k (renormalised or not, as
the family does) then picks among the rest.  Zeroing the removed experts' gates after top-k would
not match: it changes neither the softmax denominator nor which other experts fill the top-k.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from helpers import MOE_CONFIGS, byte_tokenizer, tiny_moe
from prunectl.errors import UserError
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.adapters import Adapter, family_for
from prunectl.modeling.loading import load_project_model
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan

FAMILIES = sorted(MOE_CONFIGS)
IDS = torch.randint(4, 260, (2, 13), generator=torch.Generator().manual_seed(3))
UNIFORM = {0: [1, 5], 1: [1, 5], 2: [1, 5]}  # removed experts per layer
UNEVEN = {0: [0, 3, 4], 2: [7]}


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(ids).logits


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def mask_routing(model, removed: dict[int, list[int]]):
    """Make every router of ``model`` unable to pick the removed experts (logits -inf)."""
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)  # None: a dense MLP layer
        if gate is None:
            continue
        renormalise = getattr(gate, "norm_topk_prob", True)  # Mixtral always renormalises

        def forward(self, x, gone=removed.get(i, []), renormalise=renormalise):
            router_logits = F.linear(x.reshape(-1, self.hidden_dim), self.weight)
            router_logits[:, gone] = float("-inf")
            top, index = router_logits.float().softmax(-1).topk(self.top_k, dim=-1)
            if renormalise:
                top = top / top.sum(-1, keepdim=True)
            return router_logits, top.to(router_logits.dtype), index

        gate.forward = types.MethodType(forward, gate)
    return model


def expert_plan(removed: dict[int, list[int]], other: dict[int, LayerPlan] | None = None) -> Plan:
    plan = {i: LayerPlan(experts=[e for e in range(8) if e not in gone])
            for i, gone in removed.items()}
    return Plan(method="t", layers={**plan, **(other or {})})


@torch.inference_mode()
def block_by_block(model, layers=None, skip_mlp=()) -> torch.Tensor:
    """Logits of ``model`` run through the adapter over ``layers`` (default all), bypassing the
    MLP blocks of the layers in ``skip_mlp``."""
    adapter = Adapter(model)
    hidden = adapter.embed_tokens(IDS)
    inputs = adapter.block_inputs(hidden)
    for i in range(adapter.num_layers) if layers is None else layers:
        hidden = adapter.attention_block(i, hidden, inputs)
        hidden = hidden if i in skip_mlp else adapter.mlp_block(i, hidden)
    return adapter.logits(hidden)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_by_block_forward_equals_the_model(family):
    model = tiny_moe(family)
    torch.testing.assert_close(block_by_block(model), logits(model), rtol=0, atol=1e-5)
    assert Adapter(model).num_experts(0) == 8 and Adapter(model).top_k == 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("removed", [UNIFORM, UNEVEN], ids=["uniform", "uneven"])
def test_expert_removal_equals_masking_them_from_routing(family, removed):
    expected = logits(mask_routing(tiny_moe(family), removed))
    assert not torch.allclose(expected, logits(tiny_moe(family)), atol=1e-3)  # removal matters
    pruned = apply_plan(tiny_moe(family), expert_plan(removed))
    close(logits(pruned), expected)
    counts = [Adapter(pruned).num_experts(i) for i in range(3)]
    assert counts == [8 - len(removed.get(i, [])) for i in range(3)]
    assert [Adapter(pruned).router(i).weight.shape[0] for i in range(3)] == counts


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_expert_count_is_a_plain_config_change(tmp_path, family):
    pruned = apply_plan(tiny_moe(family), expert_plan(UNIFORM))
    assert type(pruned).__name__ == MOE_CONFIGS[family][1]
    save_model(pruned, byte_tokenizer(), tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # no remote code
    assert reloaded.config.num_experts == 6 and "auto_map" not in reloaded.config.to_dict()
    close(logits(reloaded), logits(pruned))


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_uneven_counts_and_removed_blocks_round_trip_and_generate(tmp_path, family):
    plan = expert_plan(UNEVEN, {1: LayerPlan(attention=False)})
    expected = logits(mask_routing(tiny_moe(family), UNEVEN))
    pruned = apply_plan(tiny_moe(family), plan)
    assert type(pruned).__name__.startswith("Pruned")
    save_model(pruned, byte_tokenizer(), tmp_path / "m")
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    ours = load_project_model(tmp_path / "m", torch.device("cpu"), torch.float32)
    close(logits(remote), logits(pruned))
    close(logits(ours), logits(pruned))
    assert not torch.allclose(logits(pruned), expected, atol=1e-3)  # layer 1's attention is gone
    prompt = IDS[:1, :5]
    with torch.inference_mode():
        cached = remote.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = remote.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] == 13


def test_stock_generate_with_cache_after_uniform_removal():
    pruned = apply_plan(tiny_moe("olmoe"), expert_plan(UNIFORM))
    prompt = IDS[:1, :5]
    with torch.inference_mode():
        cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_qwen2_moe_shared_expert_is_kept_whole():
    model = tiny_moe("qwen2_moe")
    shared = {n: p.clone() for n, p in model.model.layers[0].mlp.named_parameters()
              if n.startswith("shared_expert")}
    pruned = apply_plan(model, expert_plan({0: [0, 1, 2, 3, 4, 5]}))
    after = dict(pruned.model.layers[0].mlp.named_parameters())
    assert len(shared) == 4
    for name, value in shared.items():
        assert torch.equal(after[name], value)
    assert Adapter(pruned).num_experts(0) == 2


def test_hidden_channels_slice_every_expert_router_and_shared_expert():
    keep = list(range(0, 64, 2))
    model = tiny_moe("qwen2_moe")
    block = model.model.layers[0].mlp
    expected = {
        "gate.weight": block.gate.weight[:, keep],
        "experts.down_proj": block.experts.down_proj[:, keep],
        "experts.gate_up_proj": block.experts.gate_up_proj[:, :, keep],
        "shared_expert.down_proj.weight": block.shared_expert.down_proj.weight[keep],
        "shared_expert_gate.weight": block.shared_expert_gate.weight[:, keep],
    }
    expected = {name: value.clone() for name, value in expected.items()}
    pruned = apply_plan(model, Plan(method="t", hidden_channels=keep))
    after = dict(pruned.model.layers[0].mlp.named_parameters())
    for name, value in expected.items():
        assert torch.equal(after[name], value), name
    assert pruned.config.hidden_size == 32 and torch.isfinite(logits(pruned)).all()


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
def test_mlp_block_removal_equals_bypassing_it(family):
    model = tiny_moe(family)
    expected = block_by_block(model, skip_mlp={1})
    pruned = apply_plan(model, Plan(method="t", layers={1: LayerPlan(mlp=False)}))
    close(logits(pruned), expected)


def test_dense_mlp_layers_of_qwen_moe_stay_dense_after_renumbering():
    model = tiny_moe("qwen3_moe", mlp_only_layers=[2])
    expected_model = mask_routing(tiny_moe("qwen3_moe", mlp_only_layers=[2]), {1: [0, 1]})
    expected = block_by_block(expected_model, layers=(1, 2))  # layer 0 is removed whole
    plan = expert_plan({1: [0, 1]}, {0: LayerPlan(attention=False, mlp=False)})
    pruned = apply_plan(model, plan)
    assert pruned.config.mlp_only_layers == [1] and pruned.config.num_hidden_layers == 2
    assert Adapter(pruned).experts(1) is None
    close(logits(pruned), expected)


@pytest.mark.parametrize(
    ("family", "layer", "message"),
    [
        ("mixtral", LayerPlan(experts=[3]), "keeps 1 experts but the router picks 2"),
        ("mixtral", LayerPlan(experts=[0, 9]), "experts lists index 9 outside 0..7"),
        ("qwen3_moe", LayerPlan(mlp_channels=[0, 1]), "keeps whole experts"),
        ("olmoe", LayerPlan(q_heads=[0, 1]), "heads cannot be pruned"),
    ],
)
def test_bad_expert_plans_are_user_errors_and_leave_the_model_whole(family, layer, message):
    model = tiny_moe(family)
    before = logits(model)
    with pytest.raises(UserError, match=message):
        apply_plan(model, Plan(method="t", layers={0: layer}))
    close(logits(model), before)


def test_moe_families_are_supported_and_others_still_refused_with_the_list():
    for model_type in FAMILIES:
        assert family_for(model_type).moe
    with pytest.raises(UserError, match="'deepseek_v3' is not supported.*qwen3_moe.*olmoe"):
        family_for("deepseek_v3")
