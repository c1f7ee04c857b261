"""Recovery: LoRA on a (non-uniform) pruned tiny model lowers held-out loss, merges, and resumes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import byte_tokenizer, tiny_model
from safetensors.torch import load_file
from transformers import TrainerCallback

from prunectl.distributed import Distributed
from prunectl.errors import UserError
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.loading import load_project_model
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan
from prunectl.recipe.sections import RecoverConfig
from prunectl.recovery.run import run_recovery
from prunectl.recovery.data import IGNORE, build_examples, tokenize_alpaca
from prunectl.ui import SILENT

WORDS = ["alpha", "beta", "gamma", "delta", "omega"]


@pytest.fixture
def pruned_dir(tmp_path) -> Path:
    """A non-uniform pruned tiny Llama: a KV group gone in layer 1, MLP channels cut in layer 2."""
    plan = Plan(method="test", layers={
        1: LayerPlan(q_heads=[2, 3], kv_heads=[1]),
        2: LayerPlan(mlp_channels=list(range(0, 96, 2))),
    })
    model = apply_plan(tiny_model("llama"), plan)
    return save_model(model, byte_tokenizer(), tmp_path / "pruned", torch.float32)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Repetitive text a tiny model learns in a few dozen steps."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(WORDS[(i + j) % 5] for j in range(8)) for i in range(120)))
    return path


def recover_run(**cfg) -> SimpleNamespace:
    config = RecoverConfig(**cfg)
    return SimpleNamespace(recipe=SimpleNamespace(recover=config), device=torch.device("cpu"),
                           dtype=torch.float32, ui=SILENT, force=False, dist=Distributed())


def text_run(corpus: Path, **overrides) -> SimpleNamespace:
    cfg = dict(dataset=str(corpus), format="text", cutoff_len=32, batch_size=8, micro_batch_size=8,
               max_steps=24, val_set_size=4, save_steps=12, learning_rate=5e-3, lora_dropout=0.0)
    return recover_run(**{**cfg, **overrides})


def mean_loss(model, examples) -> float:
    ids = torch.tensor([e["input_ids"] for e in examples])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_recovery_lowers_held_out_loss_and_saves_the_merged_model(pruned_dir, corpus, tmp_path):
    run = text_run(corpus)
    out = tmp_path / "recovered"
    summary = run_recovery(run, pruned_dir, out)
    assert summary["steps"] == 24 and summary["resumed_from_step"] is None
    assert summary["eval_loss_after"] < 0.8 * summary["eval_loss_before"]

    _, val = build_examples(run.recipe.recover, byte_tokenizer())
    before = mean_loss(load_project_model(pruned_dir, torch.device("cpu"), torch.float32), val)
    assert before == pytest.approx(summary["eval_loss_before"], rel=1e-4)
    merged = load_project_model(out / "model", torch.device("cpu"), torch.float32)
    assert mean_loss(merged, val) == pytest.approx(summary["eval_loss_after"], rel=1e-4)
    # the pruned shapes survive the merge: layer 1 keeps one KV group, layer 2 half its channels
    assert merged.model.layers[1].self_attn.k_proj.weight.shape[0] == 16
    assert merged.model.layers[2].mlp.down_proj.weight.shape[1] == 48

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    assert json.loads((out / "summary.json").read_text())["steps"] == 24


class StopAfterSave(TrainerCallback):
    """Dies right after the checkpoint at ``step`` is written, like a killed process."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_an_interrupted_run_resumes_from_its_checkpoint(pruned_dir, corpus, tmp_path):
    run = text_run(corpus, max_steps=4, save_steps=2)
    out = tmp_path / "recovered"
    with pytest.raises(KeyboardInterrupt):
        run_recovery(run, pruned_dir, out, callbacks=[StopAfterSave(2)])
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "model").exists()
    before = json.loads((out / "eval_before.json").read_text())

    summary = run_recovery(run, pruned_dir, out)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert summary["eval_loss_before"] == before["eval_loss"]

    straight = run_recovery(run, pruned_dir, tmp_path / "straight")
    assert straight["resumed_from_step"] is None
    resumed_adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    straight_adapter = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    for name, tensor in straight_adapter.items():
        torch.testing.assert_close(resumed_adapter[name], tensor, rtol=1e-4, atol=1e-6)

    # other inputs: the old checkpoints are not resumed but replaced
    changed = text_run(corpus, max_steps=2, save_steps=2, learning_rate=1e-3)
    again = run_recovery(changed, pruned_dir, out)
    assert again["resumed_from_step"] is None and again["steps"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_alpaca_examples_mask_the_prompt_and_end_with_eos():
    tok = byte_tokenizer()
    row = {"instruction": "Say hi.", "input": "", "output": "hi"}
    example = tokenize_alpaca(row, tok, cutoff_len=512)
    ids, labels = example["input_ids"], example["labels"]
    assert ids[-1] == tok.eos_token_id
    learned = [i for i, label in enumerate(labels) if label != IGNORE]
    assert tok.decode([ids[i] for i in learned[:-1]]) == "hi"
    assert all(labels[i] == ids[i] for i in learned)
    short = tokenize_alpaca(row, tok, cutoff_len=20)  # the prompt alone fills the cutoff
    assert all(label == IGNORE for label in short["labels"]) and len(short["input_ids"]) == 20


def test_alpaca_file_split_and_too_small_datasets(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Echo {w}.", "input": w if i % 2 else "", "output": w}
            for i, w in enumerate(WORDS * 4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = RecoverConfig(dataset=str(path), cutoff_len=256, val_set_size=5)
    train, val = build_examples(cfg, byte_tokenizer())
    assert len(train) == 15 and len(val) == 5
    assert build_examples(cfg, byte_tokenizer())[1] == val  # seeded split
    with pytest.raises(UserError, match="val_set_size=20"):
        build_examples(cfg.model_copy(update={"val_set_size": 20}), byte_tokenizer())
    with pytest.raises(UserError, match="format: text"):
        plain = tmp_path / "plain.jsonl"
        plain.write_text(json.dumps({"text": "hello"}))
        build_examples(cfg.model_copy(update={"dataset": str(plain)}), byte_tokenizer())


def test_a_torn_checkpoint_is_dropped_and_the_one_before_resumed(tmp_path):
    from prunectl.recovery.lora import last_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_st'), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_checkpoint(tmp_path / "missing") is None
