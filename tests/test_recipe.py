"""Recipe loading: extends chains, --set overrides, and one-line errors naming file, key and fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prunectl.errors import UserError
from prunectl.recipe.load import apply_override, load_recipe
from prunectl.recipe.sections import Recipe

EXAMPLE = """\
# the canonical small example: remove two blocks of a tiny model by hand
model:
  path: models/tiny
  dtype: float32
calibration:
  dataset: data/calib.txt
  nsamples: 4
  seqlen: 64
method:
  name: manual
  remove: [layers.1.mlp, layers.2.attn]
target:
  blocks: 2
eval:
  perplexity: {datasets: [data/eval.txt], seqlen: 64}
export:
  dtype: float32
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_example(path: Path) -> Path:
    """EXAMPLE at ``path``, with the model folder and data files it names beside it."""
    (path.parent / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    write(path.parent / "data" / "calib.txt", "calibration text")
    write(path.parent / "data" / "eval.txt", "evaluation text")
    return write(path, EXAMPLE)


@pytest.fixture
def example(tmp_path) -> Path:
    return write_example(tmp_path / "recipe.yaml")


def test_example_loads_with_defaults_and_round_trips_through_the_pin(example):
    recipe, resolved = load_recipe(example)
    here = example.parent.resolve()
    assert recipe.model.path == str(here / "models" / "tiny") and recipe.model.device == "auto"
    assert recipe.calibration.dataset == str(here / "data" / "calib.txt")
    assert recipe.method.name == "manual" and recipe.method.remove == ["layers.1.mlp", "layers.2.attn"]
    assert recipe.calibration.seed == 42 and recipe.calibration.batch_size == 8
    assert recipe.recover is None and recipe.section_dict("recover") is None
    assert resolved == recipe.to_dict()
    assert resolved["method"] == {"name": "manual", "remove": ["layers.1.mlp", "layers.2.attn"]}
    assert resolved["eval"]["perplexity"] == {
        "datasets": [str(here / "data" / "eval.txt")], "split": None, "seqlen": 64, "batch_size": 4,
        "max_windows": None, "add_bos": False,
    }
    assert json.loads(json.dumps(resolved)) == resolved
    # the pinned copy is YAML; loading it back gives the same recipe
    pinned = yaml.safe_load(yaml.safe_dump(resolved))
    again, resolved_again = load_recipe(None, [], pinned=pinned)
    assert resolved_again == resolved and again == recipe


def test_method_sections_keep_their_own_fields(example):
    recipe, resolved = load_recipe(example, ["method={name: blockpruner, block_type: mlp}"])
    assert type(recipe.method).__name__ == "BlockConfig"
    assert resolved["method"]["name"] == "block"  # the alias is stored canonically
    assert resolved["method"]["block_type"] == "mlp" and "early_stop" in resolved["method"]
    assert recipe.section_dict("method") == resolved["method"]


def test_overrides_apply_in_order_and_never_touch_the_pinned_dict(example):
    _, pinned = load_recipe(example)
    snapshot = json.dumps(pinned, sort_keys=True)
    recipe, resolved = load_recipe(None, [
        "calibration.nsamples=16",
        "method.remove=[layers.3]",
        "model.dtype=bfloat16",
        "~target",
        "target.params_ratio=0.25",
        "recover.max_steps=10",  # creates the section that was null
        "eval.perplexity.datasets=[wikitext2, ptb]",
    ], pinned=pinned)
    assert json.dumps(pinned, sort_keys=True) == snapshot
    assert recipe.calibration.nsamples == 16 and recipe.calibration.seqlen == 64
    assert recipe.method.remove == ["layers.3"]
    assert recipe.model.dtype == "bfloat16"
    assert recipe.target.blocks is None and recipe.target.params_ratio == 0.25
    assert recipe.recover is not None and recipe.recover.max_steps == 10
    assert recipe.recover.lora_r == 8
    assert resolved["eval"]["perplexity"]["datasets"] == ["wikitext2", "ptb"]


def test_override_grammar_edge_cases():
    data = {"a": {"b": 1, "c": [1, 2]}, "s": "text"}
    apply_override(data, "~a.b")
    apply_override(data, "~a.missing")  # deleting what is not there is a no-op
    apply_override(data, "~nothing.here")
    apply_override(data, "a.d.e={k: v}")
    apply_override(data, "a.c=")
    assert data == {"a": {"c": None, "d": {"e": {"k": "v"}}}, "s": "text"}
    for bad, fragment in [
        ("a.b", "expected key.path=value"),
        ("a..b=1", "expected key.path=value"),
        ("~a.b=1", "expected key.path=value"),
        ("s.x=1", "s is 'text', not a section"),
        ("a.b=[unclosed", "not valid YAML"),
    ]:
        with pytest.raises(UserError, match=re.escape(fragment)) as info:
            apply_override(data, bad)
        assert bad in str(info.value)


def test_extends_chain_resolves_relative_paths_and_merges(tmp_path):
    write_example(tmp_path / "team" / "base.yaml")
    write(tmp_path / "team" / "models" / "tiny.yaml", """\
extends: ../base.yaml
model: {path: other/model}
calibration: {nsamples: 8}
eval: {perplexity: {datasets: [wikitext2]}}
""")
    child = write(tmp_path / "exp" / "run.yaml", """\
extends: ../team/models/tiny.yaml
method: {remove: [layers.0.mlp]}
calibration: {seed: 7}
""")
    recipe, _ = load_recipe(child)
    assert recipe.model.path == "other/model" and recipe.model.dtype == "float32"  # dicts merge
    # each path resolves against the file that wrote it: base.yaml's data beside base.yaml
    assert recipe.calibration.dataset == str((tmp_path / "team" / "data" / "calib.txt").resolve())
    assert (recipe.calibration.nsamples, recipe.calibration.seqlen, recipe.calibration.seed) == (8, 64, 7)
    assert recipe.method.remove == ["layers.0.mlp"]  # lists replace
    assert recipe.eval.perplexity.datasets == ["wikitext2"] and recipe.eval.perplexity.seqlen == 64
    assert recipe.target.blocks == 2


def test_extends_with_another_method_replaces_the_method_section(tmp_path):
    write_example(tmp_path / "base.yaml")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nmethod: {name: block}\n")
    recipe, _ = load_recipe(child)
    assert recipe.method.name == "block" and recipe.method.block_type == "mix"


def test_extends_cycles_and_missing_bases(tmp_path):
    write(tmp_path / "a.yaml", "extends: sub/b.yaml\n")
    write(tmp_path / "sub" / "b.yaml", "extends: ../a.yaml\n")
    with pytest.raises(UserError, match="cycle") as info:
        load_recipe(tmp_path / "a.yaml")
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)
    write(tmp_path / "self.yaml", "extends: self.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")
    write(tmp_path / "orphan.yaml", "extends: gone.yaml\n")
    with pytest.raises(UserError, match=r"orphan\.yaml: extends: recipe file .*gone\.yaml does not exist"):
        load_recipe(tmp_path / "orphan.yaml")
    with pytest.raises(UserError, match=r"recipe file .*nowhere\.yaml does not exist"):
        load_recipe(tmp_path / "nowhere.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "model:\n  path: x\nmethod: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml: malformed YAML at line \d+") as info:
        load_recipe(bad)
    assert "\n" not in str(info.value)
    not_mapping = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(UserError, match=r"list\.yaml: expected a mapping"):
        load_recipe(not_mapping)


BAD = {
    # case: (override or file text change, fragments the one-line message must contain)
    "unknown key": (["model.colour=red"], ["model.colour", "unknown key", "allowed keys: path,"]),
    "unknown section": (["colur=red"], ["colur", "allowed keys: model, calibration"]),
    "typo in method key": (["method.remov=[]"], ["method.remov", "did you mean 'remove'"]),
    "literal": (["method={name: block, block_type: foo}"],
                ["method.block_type", "got 'foo'", "expected one of mha, mlp, mix, layer"]),
    "wrong type": (["calibration.nsamples=many"],
                   ["calibration.nsamples", "got 'many'", "expected an integer > 0"]),
    "not positive": (["calibration.seqlen=0"], ["calibration.seqlen", "got 0", "> 0"]),
    "ratio out of range": (["~target", "target.params_ratio=1.5"],
                           ["target.params_ratio", "got 1.5", "> 0 and < 1"]),
    "both targets": (["target.params_ratio=0.2"],
                     ["target:", "blocks=2 and params_ratio=0.2", "at most one"]),
    "dtype": (["model.dtype=fp8"], ["model.dtype", "got 'fp8'", "auto, bfloat16, float16, float32"]),
    "device": (["model.device=gpu"], ["model.device", "got 'gpu'", "cuda:N"]),
    "eval models": (["eval.models=[dense, big]"], ["eval.models[1]", "got 'big'", "dense, pruned, recovered"]),
    "recover union": (["recover.target_modules=[1]"],
                      ["recover.target_modules", "got [1]", "a list of strings or 'all-linear'"]),
    "unknown method": (["method={name: blockk}"],
                       ["method.name", "unknown method 'blockk'", "did you mean 'block'"]),
    "method not a mapping": (["method=manual"], ["method:", "expected a mapping with a name"]),
    "missing model": (["~model"], ["model: missing", "model: {path:"]),
    "missing method": (["~method"], ["method: missing", "method: {name:"]),
    "missing path": (["~model.path"], ["model.path: missing"]),
    "extends in overrides": (["extends=x.yaml"], ["extends", "only a recipe file"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_give_one_line_naming_file_key_and_allowed_values(case, example):
    overrides, fragments = BAD[case]
    with pytest.raises(UserError) as info:
        load_recipe(example, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{example}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_error_says_where_a_key_came_from_and_how_many_more(tmp_path, example):
    child = write(tmp_path / "child.yaml", "extends: recipe.yaml\ncalibration: {nsamples: -1}\n")
    with pytest.raises(UserError) as info:
        load_recipe(child)
    assert str(info.value).startswith(f"{child}: calibration.nsamples: got -1")
    # from the base file
    write(example, EXAMPLE.replace("dtype: float32\ncalibration", "dtype: fp64\ncalibration"))
    child2 = write(tmp_path / "child2.yaml", "extends: recipe.yaml\n")
    with pytest.raises(UserError, match=rf"model\.dtype: got 'fp64'.*\(from {re.escape(str(example))}\)"):
        load_recipe(child2)
    with pytest.raises(UserError) as info:
        load_recipe(example, ["calibration.seqlen=x", "eval.perplexity.seqlen=y"])
    assert "model.dtype: got 'fp64'" in str(info.value)
    assert str(info.value).endswith("(+2 more)")  # and both seqlens
    write(example, EXAMPLE)
    with pytest.raises(UserError) as info:
        load_recipe(example, ["calibration.seqlen=x"])
    assert str(info.value).endswith("calibration.seqlen: got 'x', expected an integer > 0 "
                                    "(from --set calibration.seqlen=x)")


def test_pinned_errors_name_the_pinned_recipe(example):
    _, pinned = load_recipe(example)
    with pytest.raises(UserError, match=r"^the project's pinned recipe\.yaml: model\.dtype"):
        load_recipe(None, ["model.dtype=fp8"], pinned=pinned)
    with pytest.raises(UserError, match="-r/--recipe"):
        load_recipe(None, [])


def test_recipe_model_validates_directly():
    recipe = Recipe.model_validate({"model": {"path": "m"}, "method": {"name": "manual"}})
    assert recipe.target.blocks is None and recipe.execution.mode == "model"
    assert recipe.section_dict("execution") == {"mode": "model", "memory_budget_gb": None}
    with pytest.raises(KeyError):
        recipe.section_dict("nope")
