"""Recipes for pip users: ``recipes ls`` / ``recipes cp`` read the copies inside the package,
``validate`` checks a recipe against the model's config without computing, and preflight refuses
a target the method cannot meet before any step runs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import one_error_line, save_tiny
from typer.testing import CliRunner

from prunectl.recipe import catalog
from prunectl.cli import app
from prunectl.modeling.params import count_parameters
from prunectl.recipe.load import load_recipe

runner = CliRunner()
REPO = Path(__file__).parent.parent
SOURCE = sorted((REPO / "recipes").glob("*.yaml"))




def test_the_package_carries_the_repository_s_recipes():
    assert sorted(catalog.shipped()) == [p.stem for p in SOURCE]
    for path in SOURCE:
        assert catalog.shipped()[path.stem].read_bytes() == path.read_bytes()


def test_recipes_ls_prints_one_whole_line_per_recipe_and_config():
    result = runner.invoke(app, ["recipes", "ls"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    configs = sorted(p.name for p in (REPO / "recipes").glob("*.json"))
    assert [line.split()[0] for line in lines] == [p.stem for p in SOURCE] + configs
    flap = next(line for line in lines if line.startswith("llama2-7b-flap "))
    # the whole first sentence of the recipe's comment, not its first line cut mid-sentence
    assert flap.endswith("FLAP (AAAI 2024), the reference setup for LLaMA/Llama-2-7B: WIFV metric, "
                         "adaptive structure across layers and modules (AL-AM), bias compensation, "
                         "no retraining.")
    zero = next(line for line in lines if line.startswith("ds-zero2.json "))
    assert "recover.distributed.deepspeed" in zero
    assert str(catalog.directory()) in result.stderr  # where they are


def test_recipes_cp_copies_once_and_refuses_to_overwrite(tmp_path):
    result = runner.invoke(app, ["recipes", "cp", "llama2-7b-flap", str(tmp_path)])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "llama2-7b-flap.yaml"
    assert result.output.strip() == str(copied)
    assert copied.read_bytes() == (REPO / "recipes" / "llama2-7b-flap.yaml").read_bytes()
    before = copied.read_bytes()
    one_error_line(runner.invoke(app, ["recipes", "cp", "llama2-7b-flap", str(copied)]),
                   "already exists")
    assert copied.read_bytes() == before
    one_error_line(runner.invoke(app, ["recipes", "cp", "llama2-7b-flap.yaml", str(tmp_path / "a"
                                                                                   / "b.yaml")]),
                   "does not exist; create it first")
    one_error_line(runner.invoke(app, ["recipes", "cp", "flap-9000", str(tmp_path / "x.yaml")]),
                   "no shipped recipe named 'flap-9000'", "llama2-7b-flap")
    assert runner.invoke(app, ["recipes", "cp", "ds-zero2.json", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "ds-zero2.json").read_bytes() == (REPO / "recipes" / "ds-zero2.json"
                                                           ).read_bytes()


@pytest.mark.parametrize("source", SOURCE, ids=lambda p: p.stem)
def test_every_shipped_recipe_copied_elsewhere_validates_as_the_original(tmp_path, source):
    """A copy is self-contained: its extends: chain is merged in, so it loads far from the
    package and means what the shipped recipe means; `recipes show` prints the same text."""
    # the demo's placeholder GGUF is replaced by its documented --set model.path=
    sets = [f"model.path={tmp_path}"] if "--set model.path=" in source.read_text() else []
    result = runner.invoke(app, ["recipes", "cp", source.stem, str(tmp_path / "mine.yaml")])
    assert result.exit_code == 0, result.output
    copied = (tmp_path / "mine.yaml").read_text()
    assert "extends" not in yaml.safe_load(copied)
    _, expected = load_recipe(source, sets)
    _, got = load_recipe(tmp_path / "mine.yaml", sets)
    assert got == expected
    shown = runner.invoke(app, ["recipes", "show", source.stem])
    assert shown.exit_code == 0 and shown.stdout == copied


def test_a_copied_recipe_validates_against_a_local_model(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny")
    runner.invoke(app, ["recipes", "cp", "llama2-7b-flap", str(tmp_path / "mine.yaml")])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["validate", "-r", str(tmp_path / "mine.yaml"),
                                 "--set", f"model.path={model_dir}"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM

    total = count_parameters(AutoModelForCausalLM.from_pretrained(model_dir))["total"]
    layers = sum(p.numel() for n, p in AutoModelForCausalLM.from_pretrained(model_dir)
                 .named_parameters() if ".layers." in n and "norm" not in n)
    remove = round(0.2 * layers)  # the recipe's FLAP ratio is of the layers' weights
    assert result.output.strip() == (
        f"ok: flap on llama, 4 layers, 4 heads / 2 KV heads, {total:,} parameters; target: "
        f"params_ratio 0.2 of layers ({layers:,}), removes {remove:,} parameters "
        f"({remove / total:.2%} of {total:,})")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_validate_refuses_what_cannot_run(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = REPO / "recipes" / "llama2-7b-flap.yaml"
    path = f"model.path={model_dir}"
    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe), "--set", path,
                                       "--set", "~target", "--set", "target.blocks=12"]),
                   "method flap cannot meet target.blocks (--blocks N); give "
                   "target.params_ratio (--ratio 0.2) or target.params or target.ratio_of: units")
    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe), "--set",
                                       "model.path=/nowhere/model"]), "/nowhere/model")
    one_error_line(runner.invoke(app, ["validate", "-r", str(tmp_path / "none.yaml")]),
                   "does not exist", "prunectl recipes ls")


def test_validate_checks_a_hub_recipe_against_a_stand_in_config(tmp_path):
    """A 70B recipe on a laptop: --config (file or folder) or model.config stands in for the
    hub model's config.json; nothing is downloaded, nothing written."""
    model_dir = save_tiny(tmp_path / "tiny")
    from transformers import AutoModelForCausalLM

    total = count_parameters(AutoModelForCausalLM.from_pretrained(model_dir))["total"]
    recipe = REPO / "recipes" / "llama2-7b-shortgpt.yaml"  # a hub id, and extends another
    fit = ["--set", "calibration.seqlen=64", "--set", "target.blocks=3"]  # 4 layers, not 32
    outputs = set()
    for given in (model_dir / "config.json", model_dir):
        result = runner.invoke(app, ["validate", "-r", str(recipe), "--config", str(given), *fit])
        assert result.exit_code == 0, result.output
        outputs.add(result.output.strip())
    copy = tmp_path / "mine.yaml"
    # model.config relative to the recipe file, like every path in it
    copy.write_text(catalog.text("llama2-7b-shortgpt").replace(
        "model:\n", "model:\n  config: tiny/config.json\n", 1))
    result = runner.invoke(app, ["validate", "-r", str(copy), *fit])
    assert result.exit_code == 0, result.output
    outputs.add(result.output.strip())
    assert len(outputs) == 1
    # shortgpt removes whole layers: 9 blocks of a 4-layer model cannot be; 2 can
    nine = runner.invoke(app, ["validate", "-r", str(copy), "--set", "calibration.seqlen=64"])
    one_error_line(nine, "target.blocks=9 would remove every one of the 4 candidate layers")
    layer = (total - count_parameters(AutoModelForCausalLM.from_pretrained(model_dir))
             ["embedding"] - 64) // 4
    result = runner.invoke(app, ["validate", "-r", str(copy), *fit[:2], "--set", "target.blocks=2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(
        f"target: blocks 2 of 4 layers, removes {2 * layer:,} to {2 * layer:,} parameters "
        f"({2 * layer / total:.2%} to {2 * layer / total:.2%}; the search picks which)")
    one_error_line(runner.invoke(app, ["validate", "-r", str(recipe), "--config",
                                       str(tmp_path / "none.json")]),
                   "--config:", "none.json is neither a config.json file nor a folder")


@pytest.mark.parametrize("offline", ["env", "no connection"])
def test_validate_without_the_hub_fails_at_once_naming_the_local_fix(tmp_path, monkeypatch,
                                                                     offline):
    """No retries and no wait: offline (HF_HUB_OFFLINE) or with nothing listening where the hub
    should be (a refused connection), one line naming model.config and --config."""
    import huggingface_hub.constants

    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    result = runner.invoke(app, ["validate", "-r", str(REPO / "recipes" / "llama2-7b-flap.yaml"),
                                 "--set", "model.path=nobody-here/no-such-model"])
    one_error_line(result, "model.path nobody-here/no-such-model: cannot read its config.json",
                   "HF_HUB_OFFLINE is set" if offline == "env" else "no connection to 127.0.0.1",
                   "give model.config (or validate --config) a config.json file or folder, or "
                   "model.path a local model directory")
    assert "Retry" not in result.output


def test_validate_refuses_data_that_is_neither_named_nor_here(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = REPO / "recipes" / "llama2-7b-flap.yaml"
    base = ["validate", "-r", str(recipe), "--set", f"model.path={model_dir}"]
    one_error_line(runner.invoke(app, [*base, "--set", "calibration.dataset=mydata"]),
                   "calibration.dataset: mydata is neither a named dataset nor a file or folder")
    one_error_line(runner.invoke(app, [*base, "--set", "eval.perplexity.datasets=[wikitext2, x]"]),
                   "eval.perplexity.datasets: x is neither a named dataset")
    # a method that reads no calibration data does not care what calibration.dataset says
    result = runner.invoke(app, [*base, "--set", "method={name: mag-sp}",
                                 "--set", "calibration.dataset=mydata"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("method", "flags", "message"), [
    ("flap", ["--blocks", "12"], "method flap cannot meet target.blocks"),
    ("taylor", ["--blocks", "2"], "method taylor cannot meet target.blocks"),
    ("reap", ["--blocks", "2"], "method reap cannot meet target.blocks (--blocks N); give "
     "target.experts_ratio or target.params_ratio (--ratio 0.2) or target.params"),
    ("flap", ["--set", "target.experts_ratio=0.25"],
     "method flap cannot meet target.experts_ratio; give target.params_ratio"),
    ("shortgpt", ["--set", "target.ratio_of=units", "--ratio", "0.2"],
     "method shortgpt cannot meet target.ratio_of: units; give target.blocks (--blocks N) or "
     "target.params_ratio (--ratio 0.2) or target.params"),
])
def test_preflight_refuses_a_target_before_calibration(tmp_path, text_file, method, flags,
                                                       message):
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": method}}))
    project = tmp_path / "proj"
    result = runner.invoke(app, ["run", "-p", str(project), "-r", str(recipe), *flags])
    one_error_line(result, message)
    assert not (project / "calibration").exists() and not (project / "recipe.yaml").exists()


@pytest.mark.slow
def test_the_wheel_ships_the_recipes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = zipfile.ZipFile(next(tmp_path.glob("prunectl-*.whl")))
    names = set(wheel.namelist())
    for path in (*SOURCE, *sorted((REPO / "recipes").glob("*.json"))):
        assert wheel.read(f"prunectl/recipes/{path.name}") == path.read_bytes()
    assert not {n for n in names if n.startswith("recipes/")}
