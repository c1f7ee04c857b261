"""``prunectl recover`` under torchrun: two gloo processes train what one process trains.

One pruned tiny project is recovered once in this process (the reference) and once by
``torchrun --nproc_per_node 2 prunectl recover``; the global batch (8 = 2 ranks x 2 accumulated
micro-batches of 2) must give the single process's steps, losses and adapter, which rank 0 alone
could not reach without rank 1's gradients.  An audit hook (``sitecustomize`` on PYTHONPATH)
logs every write each rank makes under the project, so "rank 0 writes, rank 1 does not" is
observed, not assumed.  A killed two-process run resumes to the same adapter.  FSDP and
DeepSpeed cannot run on CPU (accelerate falls back to DDP there), so their refusal is tested,
along with the recipe keys that name them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TEXT, invoke
from safetensors.torch import load_file
from test_recover_cli import pruned_project, recover_record

from prunectl.errors import UserError
from prunectl.modeling.loading import load_project_model
from prunectl.recipe.load import load_recipe
from prunectl.recipe.sections import RecoverConfig
from prunectl.recovery.parallel import check

WORLD = 2
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
#: 68 windows - 4 held out = 64 training examples: 8 global batches of 8 per epoch, 2 epochs
RECOVER = {"batch_size": 8, "micro_batch_size": 2, "max_samples": 68, "num_epochs": 2,
           "save_steps": 4, "lora_dropout": 0.0}
STEPS = 2 * 64 // 8

AUDIT = '''
import os, sys
if os.environ.get("AUDIT_DIR") and "RANK" in os.environ:
    _root = os.environ["AUDIT_ROOT"]
    _log = open(os.path.join(os.environ["AUDIT_DIR"], "rank" + os.environ["RANK"]), "a",
                buffering=1)
    _log.write("pid %d\\n" % os.getpid())
    _mask = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if mode else bool((flags or 0) & _mask)
        elif event == "os.rename":  # os.replace too: the file it puts in place
            path, writes = args[1], True
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(path))
            if path.startswith(_root):
                _log.write(event + " " + os.path.relpath(path, _root) + "\\n")

    sys.addaudithook(_hook)
'''



@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A taylor-pruned project ready for ``recover`` (copied by each test)."""
    root = tmp_path_factory.mktemp("template")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}. " + TEXT * (1 + i % 3) for i in range(60)))
    return pruned_project(root, text, max_steps=None, **RECOVER)


@pytest.fixture(scope="module")
def single(template, tmp_path_factory) -> Path:
    """The reference: the same project recovered by one process."""
    project = tmp_path_factory.mktemp("single") / "proj"
    shutil.copytree(template, project)
    result = invoke("recover", "-p", project, "--quiet")
    assert result.exit_code == 0, result.output
    return project


def torchrun(project: Path, audit: Path, **popen) -> subprocess.Popen:
    """``torchrun --nproc_per_node 2 prunectl recover -p project`` with the audit hook."""
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", AUDIT_DIR=str(audit), AUDIT_ROOT=str(project.resolve()),
               PYTHONPATH=os.pathsep.join(filter(None, [str(audit), env.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(WORLD), "--no-python", str(Path(sys.executable).with_name("prunectl")),
               "recover", "-p", str(project), "--quiet"]
    return subprocess.Popen(command, env=env, text=True, **popen)


def audit_log(audit: Path, rank: int) -> list[str]:
    return [line for line in (audit / f"rank{rank}").read_text().splitlines()
            if not line.startswith("pid ")]


def adapter(project: Path) -> dict[str, torch.Tensor]:
    return load_file(project / "recovered" / "adapter" / "adapter_model.safetensors")


def summary(project: Path) -> dict:
    return json.loads((project / "recovered" / "summary.json").read_text())


@pytest.mark.slow  # spawns processes
def test_torchrun_recover_trains_the_global_batch_and_only_rank_0_writes(template, single,
                                                                          tmp_path):
    project = tmp_path / "proj"
    shutil.copytree(template, project)
    done = torchrun(project, tmp_path / "audit", stderr=subprocess.PIPE)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]

    one, two = summary(single), summary(project)
    # the global batch is recover.batch_size: as many optimizer steps as one process takes
    assert one["train_examples"] == two["train_examples"] == 64
    assert one["steps"] == two["steps"] == STEPS
    assert recover_record(project)["status"] == "done"
    assert two["eval_loss_before"] == pytest.approx(one["eval_loss_before"], rel=1e-6)
    assert two["eval_losses"] == pytest.approx(one["eval_losses"], rel=1e-5)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    # each rank saw half of every batch: equal weights need the gradients of both
    for name, tensor in adapter(single).items():
        torch.testing.assert_close(adapter(project)[name], tensor, rtol=1e-4, atol=1e-6)

    # the merged model is the pruned one plus (alpha / r) B A of the saved adapter
    cfg = load_recipe(None, pinned=yaml.safe_load((project / "recipe.yaml").read_text()))[0]
    scale = cfg.recover.lora_alpha / cfg.recover.lora_r
    cpu = torch.device("cpu")
    merged = load_project_model(project / "recovered" / "model", cpu, torch.float32).state_dict()
    pruned = load_project_model(project / "pruned", cpu, torch.float32).state_dict()
    lora = adapter(project)
    merged_layers = 0
    for name, weight in pruned.items():
        key = "base_model.model." + name.removesuffix(".weight")
        expected = weight
        if f"{key}.lora_A.weight" in lora:
            expected = weight + scale * lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"]
            merged_layers += 1
        assert torch.isfinite(merged[name]).all()
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    assert merged_layers == len(lora) // 2 > 0

    # rank 1 made nothing but the Trainer's checkpoint folders (for its RNG state, which
    # torch.save writes from C++, unaudited)
    rank1 = audit_log(tmp_path / "audit", 1)
    assert rank1 == [f"os.mkdir recovered/checkpoints/checkpoint-{step}"
                     for step in range(4, STEPS + 1, 4)]
    assert (project / "recovered/checkpoints/checkpoint-16/rng_state_1.pth").is_file()
    # rank 0 put every file in place once (atomic writes: a rename each), state.json at the
    # step's start and end
    placed = Counter(line.split()[1] for line in audit_log(tmp_path / "audit", 0)
                     if line.startswith("os.rename") and "checkpoints/" not in line)
    # (+ the status cache after the command, and the adapter's config with its base path set
    # inside the adapter's temporary folder)
    assert placed == {"state.json": 2, ".status.json": 1, **{f"recovered/{name}": 1 for name in (
        "inputs.json", "eval_before.json", "adapter", "adapter.tmp/adapter_config.json", "model",
        "summary.json")}}


@pytest.mark.slow  # spawns processes
def test_torchrun_kd_trains_what_one_process_trains_and_rank_0_writes_the_cache(template,
                                                                                tmp_path):
    """Full fine-tuning by KD+LM from a top-k teacher cache: the ranks build one shard each,
    rank 0 writes both; training equals the single process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    for project in (one, two):
        shutil.copytree(template, project)
        pinned = yaml.safe_load((project / "recipe.yaml").read_text())
        pinned["recover"].update(objective="kd+lm", mode="full", kd={"cache_topk": 16})
        (project / "recipe.yaml").write_text(yaml.safe_dump(pinned))
    result = invoke("recover", "-p", one, "--quiet")
    assert result.exit_code == 0, result.output
    done = torchrun(two, tmp_path / "audit", stderr=subprocess.PIPE)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]

    first, second = summary(one), summary(two)
    assert first["steps"] == second["steps"] == STEPS
    for key in ("eval_loss_before", "train_loss", "kl_before", "kl_after", "perplexity_after"):
        assert second[key] == pytest.approx(first[key], rel=1e-5), key
    assert second["eval_losses"] == pytest.approx(first["eval_losses"], rel=1e-5)
    cpu = torch.device("cpu")
    reference = load_project_model(one / "recovered" / "model", cpu, torch.float32).state_dict()
    trained = load_project_model(two / "recovered" / "model", cpu, torch.float32).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-6)
    assert audit_log(tmp_path / "audit", 1) == [
        f"os.mkdir recovered/checkpoints/checkpoint-{step}" for step in range(4, STEPS + 1, 4)]
    placed = Counter(line.split()[1] for line in audit_log(tmp_path / "audit", 0)
                     if line.startswith("os.rename") and "teacher_topk" in line)
    assert placed == {f"recovered/teacher_topk/{name}": 1 for name in (
        "meta.json", "shard-00000.safetensors", "shard-00001.safetensors")}


@pytest.mark.slow  # spawns processes
def test_a_killed_torchrun_recover_resumes_to_the_same_adapter(template, single, tmp_path):
    project = tmp_path / "proj"
    shutil.copytree(template, project)
    audit = tmp_path / "audit"
    launcher = torchrun(project, audit, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = project / "recovered" / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = [int(next(line for line in (audit / f"rank{r}").read_text().splitlines()
                      if line.startswith("pid ")).split()[1]) for r in range(WORLD)]
    for pid in ranks:  # the ranks run in their own sessions: each is killed by its id
        os.kill(pid, signal.SIGKILL)
    launcher.kill()
    launcher.wait()
    assert first.exists() and not (project / "recovered" / "model").exists()
    assert recover_record(project)["status"] != "done"

    shutil.rmtree(audit)
    again = torchrun(project, audit, stderr=subprocess.PIPE)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    resumed = summary(project)
    assert 4 <= resumed["resumed_from_step"] < STEPS and resumed["steps"] == STEPS
    assert resumed["eval_loss_before"] == pytest.approx(summary(single)["eval_loss_before"])
    for name, tensor in adapter(single).items():
        torch.testing.assert_close(adapter(project)[name], tensor, rtol=1e-4, atol=1e-6)


# --- FSDP and DeepSpeed: recipe keys and refusals ---------------------------------------------
LAUNCHED = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2"}


def recover_config(**distributed) -> RecoverConfig:
    return RecoverConfig(batch_size=8, micro_batch_size=2, distributed=distributed)


def test_fsdp_and_deepspeed_are_refused_where_the_trainer_cannot_run_them():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fsdp = recover_config(fsdp={"version": 2})
    assert check(recover_config(), cpu, 2, LAUNCHED) == "ddp"
    with pytest.raises(UserError, match=r"recover.distributed.fsdp asks for fsdp, which needs a "
                                        r"launcher; run under torchrun"):
        check(fsdp, cuda, 1, {})
    with pytest.raises(UserError, match=r"recover.distributed.fsdp .* CUDA GPUs only .* falls "
                                        r"back to plain DDP"):
        check(fsdp, cpu, 2, LAUNCHED)
    assert check(fsdp, cuda, 2, LAUNCHED) == "fsdp"
    # accelerate launch --config_file passes its choice in the environment
    with pytest.raises(UserError, match="accelerate launch's config asks for fsdp.*CUDA"):
        check(recover_config(), cpu, 2, {**LAUNCHED, "ACCELERATE_USE_FSDP": "true",
                                         "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"})
    with pytest.raises(UserError, match="sharded state dict"):
        check(recover_config(), cuda, 2, {**LAUNCHED, "ACCELERATE_USE_FSDP": "true",
                                          "FSDP_VERSION": "2"})
    with pytest.raises(UserError, match="recover.distributed.fsdp is set but accelerate launch "
                                        "asks for deepspeed"):
        check(fsdp, cuda, 2, {**LAUNCHED, "ACCELERATE_USE_DEEPSPEED": "true"})
    # the global batch: 8 is not 2 micro-batches of 2 on each of 3 processes
    with pytest.raises(UserError, match=r"batch_size=8 is not a multiple of micro_batch_size x "
                                        r"processes \(2 x 3 = 6\)"):
        check(recover_config(), cpu, 3, LAUNCHED)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None,
                    reason="deepspeed is installed here")
def test_deepspeed_without_deepspeed_installed_is_a_clear_error():
    ds = recover_config(deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(UserError, match="asks for DeepSpeed, which is not installed; "
                                        "pip install deepspeed"):
        check(ds, torch.device("cuda"), 2, LAUNCHED)


def recipe_with(tmp_path: Path, distributed: dict, **recover) -> Path:
    path = tmp_path / "recipes" / "recipe.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({
        "model": {"path": "unused"}, "method": {"name": "magnitude"},
        "recover": {"batch_size": 8, "micro_batch_size": 2, "distributed": distributed,
                    **recover},
    }))
    return path


def test_distributed_configs_are_read_relative_to_the_recipe_and_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "ds.json").write_text(json.dumps(
        {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    (folder / "fsdp.yaml").write_text("fsdp_version: 2\nfsdp_auto_wrap_policy: "
                                      "TRANSFORMER_BASED_WRAP\n")
    recipe, resolved = load_recipe(recipe_with(tmp_path, {"deepspeed": "ds.json"}))
    assert recipe.recover.distributed.deepspeed == json.loads((folder / "ds.json").read_text())
    # a recipe elsewhere that extends it: the path stays relative to the file that names it
    child = tmp_path / "elsewhere" / "child.yaml"
    child.parent.mkdir()
    child.write_text("extends: ../recipes/recipe.yaml\nrecover: {lora_r: 4}\n")
    extended, _ = load_recipe(child)
    assert extended.recover.distributed == recipe.recover.distributed
    assert resolved["recover"]["distributed"]["deepspeed"]["zero_optimization"] == {"stage": 2}
    # the pinned copy holds the options, so it loads without the file
    (folder / "ds.json").unlink()
    assert load_recipe(None, pinned=resolved)[0].recover == recipe.recover

    recipe, _ = load_recipe(recipe_with(tmp_path, {"fsdp": "fsdp.yaml"}))
    assert recipe.recover.distributed.fsdp == {"version": 2,
                                                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    inline, _ = load_recipe(recipe_with(tmp_path, {"fsdp": {"cpu_offload": True}}))
    assert inline.recover.distributed.fsdp == {"cpu_offload": True}
    # --set paths are relative to the working directory
    (tmp_path / "here.json").write_text('{"version": 2}')
    overridden, _ = load_recipe(recipe_with(tmp_path, {}),
                                ["recover.distributed.fsdp=here.json"])
    assert overridden.recover.distributed.fsdp == {"version": 2}


def test_the_shipped_distributed_configs_load_with_the_llm_pruner_recipe():
    recipes = Path(__file__).parent.parent / "recipes"
    for key, name in (("deepspeed", "ds-zero2.json"), ("fsdp", "fsdp-lora.json")):
        recipe, _ = load_recipe(recipes / "llama2-7b-llm-pruner.yaml",
                                [f"recover.distributed.{key}={recipes / name}"])
        assert getattr(recipe.recover.distributed, key) == json.loads((recipes / name).read_text())
        assert name in (recipes / "llama2-7b-llm-pruner.yaml").read_text()


@pytest.mark.parametrize(("distributed", "recover", "words"), [
    ({"deepspeed": "missing.json"}, {},
     [r"recover.distributed.deepspeed: file .*recipes/missing.json does not exist"]),
    ({"fsdp": "broken.json"}, {},
     [r"recover.distributed.fsdp: .*broken.json is not valid JSON/YAML at line 1"]),
    ({"fsdp": "list.json"}, {}, [r"fsdp: .*list.json holds list, expected a mapping"]),
    ({"fsdp": {"reshard_after_foward": True}}, {},
     [r"unknown FSDP option 'reshard_after_foward' \(did you mean 'reshard_after_forward'\?\)"]),
    ({"fsdp": {"fsdp_offload_params": True}}, {}, ["accelerate-config option", "'cpu_offload'"]),
    ({"fsdp": {"state_dict_type": "SHARDED_STATE_DICT"}}, {}, ["use FULL_STATE_DICT"]),
    ({"fsdp": {}, "deepspeed": {}}, {}, ["recover.distributed: got both fsdp and deepspeed"]),
    ({"fsdp": {"activation_checkpointing": True}}, {"gradient_checkpointing": True},
     ["recover: got gradient_checkpointing and distributed.fsdp.activation_checkpointing"]),
    ({"deepspeed": {"train_micro_batch_size_per_gpu": 4}}, {},
     [r"train_micro_batch_size_per_gpu=4 contradicts recover.micro_batch_size=2", '"auto"']),
    ({}, {"batch_size": 10, "micro_batch_size": 4},
     ["recover: got batch_size=10, micro_batch_size=4, expected batch_size a multiple"]),
])
def test_bad_distributed_keys_are_one_line_errors(tmp_path, distributed, recover, words):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "broken.json").write_text('{"version": 2,,}')
    (folder / "list.json").write_text("[1, 2]")
    path = recipe_with(tmp_path, distributed, **recover)
    with pytest.raises(UserError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    for pattern in words:
        assert re.search(pattern, message), message


def test_the_cli_refuses_fsdp_on_cpu_before_touching_the_project(tmp_path, text_file):
    project = pruned_project(tmp_path, text_file, max_steps=2)
    kept = {name: (project / name).read_text() for name in ("state.json", "recipe.yaml")}
    result = invoke("recover", "-p", project, "--quiet",
                    "--set", "recover.distributed.fsdp={version: 2}")
    assert result.exit_code == 2
    assert "recover.distributed.fsdp asks for fsdp, which needs a launcher" in result.output
    assert not (project / "recovered").exists()
    assert {name: (project / name).read_text() for name in kept} == kept
