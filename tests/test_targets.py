"""``target.ratio_of`` and ``target.params``: every base against sizes computed by hand from the
Llama-2-7B and SmolLM2-135M configs (models built on the meta device, nothing allocated), the
papers' sizes reproduced by the methods' searches, and bad targets refused through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from helpers import invoke, save_tiny, tiny_model, write_recipe

from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.target import ratio_bases, resolve_params_target
from prunectl.modeling.params import count_parameters
from prunectl.recipe.load import load_recipe

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 tie_word_embeddings=False)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    tie_word_embeddings=True)

# Llama-2-7B: per layer q, k, v, o 4 x 4096^2 = 67,108,864 and gate, up, down 3 x 4096 x 11008 =
# 135,266,304 (202,375,168 weights), two norms 8,192; embedding and head 2 x 32000 x 4096.
L7_LAYER_WEIGHTS = 4 * 4096**2 + 3 * 4096 * 11008
L7_TOTAL = 2 * 32000 * 4096 + 32 * (L7_LAYER_WEIGHTS + 2 * 4096) + 4096
# SmolLM2-135M: q, o 576^2 each, k, v 192 x 576 each, 3 x 576 x 1536 MLP; one tied embedding.
SM_LAYER_WEIGHTS = 2 * 576**2 + 2 * 192 * 576 + 3 * 576 * 1536
SM_TOTAL = 49152 * 576 + 30 * (SM_LAYER_WEIGHTS + 2 * 576) + 576



def meta_llama(**config):
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))


def test_hand_computed_sizes_are_the_known_ones():
    assert L7_TOTAL == 6_738_415_616 and L7_LAYER_WEIGHTS == 202_375_168
    assert SM_TOTAL == 134_515_008 and SM_LAYER_WEIGHTS == 3_538_944


@pytest.mark.parametrize(("config", "expected"), [
    (LLAMA2_7B, {"total": L7_TOTAL, "non_embedding": L7_TOTAL - 2 * 32000 * 4096,
                 "layers": 32 * L7_LAYER_WEIGHTS, "units": 26 * L7_LAYER_WEIGHTS}),
    (SMOLLM2_135M, {"total": SM_TOTAL, "non_embedding": SM_TOTAL - 49152 * 576,
                    "layers": 30 * SM_LAYER_WEIGHTS, "units": 26 * SM_LAYER_WEIGHTS}),
], ids=["llama2-7b", "smollm2-135m"])
def test_every_base_matches_the_config(config, expected):
    model = meta_llama(**config)
    assert ratio_bases(model, range(4, 30)) == expected
    assert count_parameters(model)["total"] == expected["total"]


def test_flap_ratio_of_layers_is_19_22_percent_of_llama2_7b():
    goal = resolve_params_target(Target(params_ratio=0.2, ratio_of="layers"),
                                 meta_llama(**LLAMA2_7B), "flap")
    assert goal.remove == 1_295_201_075  # round(0.2 x 6,476,005,376)
    assert round(goal.remove / L7_TOTAL, 4) == 0.1922
    total = resolve_params_target(Target(params_ratio=0.2), meta_llama(**LLAMA2_7B), "flap")
    assert total.remove == round(0.2 * L7_TOTAL)  # the default base removes 4% more


def test_smollm2_total_ratio_removes_27_percent_more_than_flap_s():
    model = meta_llama(**SMOLLM2_135M)
    of_total = resolve_params_target(Target(params_ratio=0.2), model, "flap")
    of_layers = resolve_params_target(Target(params_ratio=0.2, ratio_of="layers"), model, "flap")
    of_body = resolve_params_target(Target(params_ratio=0.2, ratio_of="non_embedding"), model, "x")
    assert of_layers.remove == round(0.2 * 30 * SM_LAYER_WEIGHTS) == 21_233_664
    assert of_body.remove == round(0.2 * (SM_TOTAL - 49152 * 576))
    assert round(of_total.remove / of_layers.remove, 2) == 1.27


def test_absolute_params_and_missing_or_impossible_targets():
    model = meta_llama(**SMOLLM2_135M)
    goal = resolve_params_target(Target(params=20_000_000), model, "flap")
    assert (goal.remove, goal.ratio, goal.label) == (20_000_000, None, "target.params=20000000")
    with pytest.raises(UserError, match="flap needs target.params_ratio or target.params"):
        resolve_params_target(Target(blocks=4), model, "flap")
    with pytest.raises(UserError, match=f"target.params=200000000 is not below .*{SM_TOTAL:,}"):
        resolve_params_target(Target(params=200_000_000), model, "flap")


def random_width_scores(num_layers, heads, channels, hidden=None):
    g = torch.Generator().manual_seed(0)
    scores = {}
    for i in range(num_layers):
        scores[f"layers.{i}.heads"] = torch.rand(heads, generator=g)
        scores[f"layers.{i}.channels"] = torch.rand(channels, generator=g)
    if hidden:
        scores["hidden"] = torch.rand(hidden, generator=g)
    return scores


def test_flap_search_on_llama2_7b_removes_the_paper_s_share():
    """FLAP's 0.2 of the layers' weights, 1,295,201,075 parameters (19.22% of all): the AL-AM
    cut is a prefix in score order, so it lands within half of its last unit, at most a head
    (4 x 4096 x 128 = 2,097,152), of the budget."""
    model = meta_llama(**LLAMA2_7B)
    method = create_method(parse_method_config({"name": "flap"}))
    plan = method.search(Inputs(model, target=Target(params_ratio=0.2, ratio_of="layers")),
                         random_width_scores(32, 32, 11008))
    assert abs(plan.achieved["params_removed"] - 1_295_201_075) <= 2_097_152 // 2
    assert round(plan.achieved["params_ratio"], 3) == 0.192
    assert plan.achieved["target_ratio_of"] == "layers"
    assert plan.achieved["target_params_removed"] == 1_295_201_075


def taylor_plan(model, **target_keys):
    """LLM-Pruner's defaults (layers 4..L-2, local ranking) with random importance."""
    method = create_method(parse_method_config({"name": "taylor", "importance": "random"}))
    inputs = Inputs(model, target=Target(**target_keys))
    return method.search(inputs, method.score(inputs, {}))


def test_llm_pruner_units_on_llama2_7b_keep_24_heads_and_8256_channels():
    """LLM-Pruner's README: pruning_ratio 0.25 on layers 4..29 removes 8 heads and 2,752
    channels of each, leaving 6,738,415,616 - 26 x (8 x 4 x 4096 x 128 + 2752 x 3 x 4096)
    = 5,422,977,024 parameters."""
    plan = taylor_plan(meta_llama(**LLAMA2_7B), params_ratio=0.25, ratio_of="units")
    assert set(plan.layers) == set(range(4, 30))
    assert {len(lp.q_heads) for lp in plan.layers.values()} == {24}
    assert {len(lp.mlp_channels) for lp in plan.layers.values()} == {8256}
    removed = 26 * (8 * 4 * 4096 * 128 + 2752 * 3 * 4096)
    assert plan.achieved["params_removed_estimate"] == removed == 1_315_438_592
    assert L7_TOTAL - removed == 5_422_977_024


def test_taylor_units_on_smollm2_keep_int_of_three_quarters():
    """3 query heads per group x 0.75 = 2.25 -> 2 kept in each of the 3 KV groups,
    1536 x 0.75 = 1152 channels, in layers 4..27 of 30."""
    plan = taylor_plan(meta_llama(**SMOLLM2_135M), params_ratio=0.25, ratio_of="units")
    assert set(plan.layers) == set(range(4, 28))
    assert {len(lp.q_heads) for lp in plan.layers.values()} == {6}
    assert {tuple(lp.kv_heads) for lp in plan.layers.values()} == {(0, 1, 2)}
    assert {len(lp.mlp_channels) for lp in plan.layers.values()} == {1152}


def test_magnitude_units_is_torch_pruning_s_ratio_and_layers_is_solved():
    model = meta_llama(**SMOLLM2_135M)
    method = create_method(parse_method_config({"name": "magnitude"}))
    scores = random_width_scores(30, 9, 1536, hidden=576)
    plan = method.search(Inputs(model, target=Target(params_ratio=0.25, ratio_of="units")), scores)
    assert plan.achieved["pruning_ratio"] == 0.25
    assert plan.achieved["intermediate_size"] == 1152  # 1536 - int(0.25 x 1536), a multiple of 4
    solved = method.search(Inputs(model, target=Target(params_ratio=0.2, ratio_of="layers")),
                           scores)
    assert solved.achieved["target_params_removed"] == 21_233_664
    # one uniform ratio moves SmolLM2's 3 KV groups a third at a time: coarse, and said so
    off = abs(solved.achieved["params_removed"] - 21_233_664) > 0.005 * SM_TOTAL
    assert off == any("(target.params_ratio=0.2 of layers)" in n for n in solved.notes)
    of_total = method.search(Inputs(model, target=Target(params_ratio=0.2)), scores)
    assert solved.achieved["pruning_ratio"] < of_total.achieved["pruning_ratio"]


def test_block_removal_takes_a_params_target_and_refuses_units():
    """ShortGPT on a tiny Llama: each layer holds 64 x (64 + 32 + 32 + 64) + 3 x 64 x 96 weights
    (30,720), and ``params: 61,440`` is exactly two of them."""
    model = tiny_model("llama")
    method = create_method(parse_method_config({"name": "shortgpt"}))
    scores = {"block_influence": torch.tensor([0.5, 0.1, 0.2, 0.9])}
    plan = method.search(Inputs(model, target=Target(params=2 * 30_720)), scores)
    assert sorted(plan.removal_order[: plan.achieved["blocks"]]) == ["layers.1", "layers.2"]
    layers = method.search(Inputs(model, target=Target(params_ratio=0.5, ratio_of="layers")),
                           scores)
    assert layers.achieved["blocks"] == 2
    with pytest.raises(UserError, match="ratio_of: units is a share of heads and channels"):
        method.search(Inputs(model, target=Target(params_ratio=0.5, ratio_of="units")), scores)


def mag_sp_recipe(tmp_path, model_dir, text_file, target_section):
    """mag-sp with ``target_section``; the calibration seed is the recipe's default, 42."""
    return write_recipe(tmp_path / "recipe.yaml", model_dir, text_file,
                        calibration={"nsamples": 2, "seqlen": 16, "seed": 42},
                        method={"name": "mag-sp"}, target=target_section)


def test_cli_search_honours_ratio_of_and_ratio_flag_keeps_it(tmp_path, text_file):
    """mag-sp UL-UM on a tiny Llama (4 layers of 30,720 weights): 0.25 of the layers is 30,720
    parameters; ``--ratio 0.5`` keeps ``ratio_of: layers`` and asks for 61,440."""
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = mag_sp_recipe(tmp_path, model_dir, text_file,
                           {"params_ratio": 0.25, "ratio_of": "layers"})
    project = tmp_path / "proj"
    for args in (["-r", str(recipe)], ["--ratio", "0.5"]):
        result = invoke("search", "-p", project, "--quiet", *args)
        assert result.exit_code == 0, result.output
        plan = json.loads((project / "search" / "plan.json").read_text())
        assert plan["achieved"]["target_ratio_of"] == "layers"
    assert plan["achieved"]["target_params_removed"] == 61_440
    assert abs(plan["achieved"]["params_removed"] - 61_440) <= 3 * 64 + 64


@pytest.mark.parametrize(("section", "message"), [
    ({"blocks": 2, "ratio_of": "layers"},
     "target: got ratio_of=layers without params_ratio, expected params_ratio with it"),
    ({"params": 1000, "params_ratio": 0.2}, "got params_ratio=0.2 and params=1000, expected at "
                                            "most one of them"),
    ({"params_ratio": 0.2, "ratio_of": "heads"}, "target.ratio_of"),
])
def test_cli_refuses_bad_targets_with_one_line(tmp_path, text_file, section, message):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = mag_sp_recipe(tmp_path, model_dir, text_file, section)
    project = tmp_path / "proj"
    result = invoke("search", "-p", project, "-r", recipe)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (project / "search").exists()


RECIPES = Path(__file__).parent.parent / "recipes"


def test_shipped_flap_recipe_removes_19_22_percent_of_llama2_7b():
    recipe, _ = load_recipe(RECIPES / "llama2-7b-flap.yaml")
    assert recipe.eval.perplexity.seqlen == 128
    goal = resolve_params_target(recipe.target, meta_llama(**LLAMA2_7B), "flap")
    assert round(goal.remove / L7_TOTAL, 4) == 0.1922


def test_shipped_llm_pruner_recipe_leaves_5_42b_of_llama2_7b():
    recipe, _ = load_recipe(RECIPES / "llama2-7b-llm-pruner.yaml", ["method.importance=random"])
    assert recipe.eval.perplexity.seqlen == 128
    model = meta_llama(**LLAMA2_7B)
    method = create_method(recipe.method)
    inputs = Inputs(model, target=Target.of(recipe.target))
    plan = method.search(inputs, method.score(inputs, {}))
    assert {32 - len(lp.q_heads) for lp in plan.layers.values()} == {8}
    assert {11008 - len(lp.mlp_channels) for lp in plan.layers.values()} == {2752}
    left = L7_TOTAL - plan.achieved["params_removed_estimate"]
    assert left == 5_422_977_024 and f"{left / 1e9:.2f}B" == "5.42B"
