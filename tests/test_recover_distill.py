"""Distillation recovery: the KD loss against an independent KL, the top-k cache (exact when k
covers the vocabulary, resumable), and a KD run's figures against the models it saved."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import VOCAB, byte_tokenizer, save_tiny, tiny_model

from prunectl.distributed import Distributed
from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.loading import load_project_model
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan
from prunectl.recipe.sections import ModelConfig, RecoverConfig
from prunectl.recovery.run import run_recovery
from prunectl.recovery.data import IGNORE, build_examples
from prunectl.recovery.distill import DistillTrainer, distill_terms
from prunectl.recovery.lora import make_trainer, training_arguments
from prunectl.recovery.teacher import SHARD, LiveTeacher, TopKCache, build_topk_cache, fingerprint
from prunectl.ui import SILENT

CPU = torch.device("cpu")
WORDS = ["alpha", "beta", "gamma", "delta", "omega"]


@pytest.fixture
def dense_dir(tmp_path) -> Path:
    return save_tiny(tmp_path / "dense", "llama")


@pytest.fixture
def pruned_dir(dense_dir, tmp_path) -> Path:
    """The dense model (same seed) with a KV group gone in layer 1 and half of layer 2's MLP."""
    plan = Plan(method="test", layers={
        1: LayerPlan(q_heads=[2, 3], kv_heads=[1]),
        2: LayerPlan(mlp_channels=list(range(0, 96, 2))),
    })
    return save_model(apply_plan(tiny_model("llama"), plan), byte_tokenizer(),
                      tmp_path / "pruned", torch.float32)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(WORDS[(i + j) % 5] for j in range(8)) for i in range(120)))
    return path


def kd_run(dense_dir: Path, corpus: Path, **overrides) -> SimpleNamespace:
    cfg = dict(dataset=str(corpus), format="text", cutoff_len=32, batch_size=8, micro_batch_size=8,
               max_steps=8, val_set_size=4, save_steps=4, learning_rate=5e-3, lora_dropout=0.0,
               objective="kd")
    recipe = SimpleNamespace(recover=RecoverConfig(**{**cfg, **overrides}),
                             model=ModelConfig(path=str(dense_dir), dtype="float32"))
    return SimpleNamespace(recipe=recipe, device=CPU, dtype=torch.float32, ui=SILENT,
                           force=False, dist=Distributed())


def masked_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Equal-length examples as a batch, the first few labels of each masked (as a prompt)."""
    ids = torch.tensor([e["input_ids"] for e in examples])
    labels = ids.clone()
    for row in range(len(labels)):
        labels[row, : 3 + 2 * row] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "kd_index": torch.tensor([e["kd_index"] for e in examples])}


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """KL(p ‖ q) per scored position, from explicit softmaxes in float64 and a loop."""
    rows = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] == IGNORE:
                continue
            p = torch.exp(teacher[b, t].double() / temperature)
            q = torch.exp(student[b, t].double() / temperature)
            p, q = p / p.sum(), q / q.sum()
            rows.append((p * (p.log() - q.log())).sum())
    return torch.stack(rows)


def logits_of(directory: Path, batch: dict, pruned: bool = True) -> torch.Tensor:
    model = load_project_model(directory, CPU, torch.float32) if pruned else \
        tiny_model("llama")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).logits


@pytest.mark.parametrize("objective,temperature", [("kd", 1.0), ("kd", 2.5), ("kd+lm", 2.0)])
def test_the_trainer_loss_is_the_forward_kl_times_t_squared(dense_dir, pruned_dir, corpus,
                                                            tmp_path, objective, temperature):
    kd = {"temperature": temperature, **({"weight": 0.3} if objective == "kd+lm" else {})}
    run = kd_run(dense_dir, corpus, objective=objective, kd=kd)
    cfg = run.recipe.recover
    train, val = build_examples(cfg, byte_tokenizer())
    examples = [{**e, "kd_index": i} for i, e in enumerate(train[:3])]
    dense = tiny_model("llama")
    trainer = make_trainer(
        load_project_model(pruned_dir, CPU, torch.float32), byte_tokenizer(), train, val, cfg,
        training_arguments(cfg, tmp_path / "ck", CPU, torch.float32, len(train), True),
        trainer_class=partial(DistillTrainer, teacher=LiveTeacher(dense, temperature),
                              kd=cfg.kd, objective=objective))
    batch = masked_batch(examples)
    loss = trainer.compute_loss(trainer.model, dict(batch))

    kl = reference_kl(logits_of(pruned_dir, batch), logits_of(dense_dir, batch, False),
                      batch["labels"], temperature)
    expected = temperature**2 * kl.mean()
    if objective == "kd+lm":  # the LM term as the model itself computes it
        pruned = load_project_model(pruned_dir, CPU, torch.float32)
        with torch.no_grad():
            lm = pruned(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        expected = 0.3 * expected + 0.7 * lm.double()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert loss.requires_grad and not any(p.requires_grad for p in dense.parameters())


def test_topk_cache_equals_the_live_teacher_when_k_covers_the_vocabulary(dense_dir, pruned_dir,
                                                                          corpus, tmp_path):
    temperature = 1.5
    run = kd_run(dense_dir, corpus, kd={"temperature": temperature})
    train, _ = build_examples(run.recipe.recover, byte_tokenizer())
    examples = [{**e, "kd_index": i} for i, e in enumerate(train[:6])]
    batch = masked_batch(examples[2:5])
    # the cache scores the positions its own examples' labels say: mask them alike
    cached_examples = [{**e, "labels": batch["labels"][i - 2].tolist()} if 2 <= i < 5 else e
                       for i, e in enumerate(examples)]
    student = logits_of(pruned_dir, batch)
    live = LiveTeacher(tiny_model("llama"), temperature)
    args = (batch["input_ids"], batch["attention_mask"], batch["kd_index"],
            batch["labels"][:, 1:] != IGNORE)
    full_kl = distill_terms(student, batch["labels"], live.log_probs(*args), temperature)[0]
    reference = reference_kl(student, logits_of(dense_dir, batch, False), batch["labels"],
                             temperature).sum()
    assert float(full_kl) == pytest.approx(float(reference), rel=1e-5)

    cached = {}
    for k in (VOCAB, 16):
        directory = tmp_path / f"top{k}"
        build_topk_cache(tiny_model("llama"), cached_examples, k, temperature, directory,
                         f"key{k}", 4, Distributed(), SILENT)
        teacher = TopKCache(directory, temperature).log_probs(*args)
        cached[k] = distill_terms(student, batch["labels"], teacher, temperature)[0]
    assert float(cached[VOCAB]) == pytest.approx(float(full_kl), rel=1e-5)

    # k < V: the KL of the (k+1)-bucket distributions (the top k, then the rest): a lower bound
    dense_logits = logits_of(dense_dir, batch, False)[:, :-1][args[3]].double() / temperature
    q = torch.softmax(student[:, :-1][args[3]].double() / temperature, -1)
    p = torch.softmax(dense_logits, -1)
    top = dense_logits.topk(16, -1).indices
    p_k, q_k = p.gather(-1, top), q.gather(-1, top)
    p_rest, q_rest = 1 - p_k.sum(-1), 1 - q_k.sum(-1)
    bucketed = (p_k * (p_k / q_k).log()).sum(-1) + p_rest * (p_rest / q_rest).log()
    assert float(cached[16]) == pytest.approx(float(bucketed.sum()), rel=1e-4)
    assert 0 < float(cached[16]) < float(full_kl)


def test_a_killed_cache_build_resumes_at_its_first_missing_shard(dense_dir, corpus, tmp_path):
    run = kd_run(dense_dir, corpus, kd={"cache_topk": 8})
    train, val = build_examples(run.recipe.recover, byte_tokenizer())
    examples = [*train, *val]
    assert len(examples) > 2 * SHARD  # three shards
    key = fingerprint(run, examples)
    teacher, calls = tiny_model("llama"), []

    def count(module, args, kill_at=None):
        calls.append(1)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed")

    build = partial(build_topk_cache, k=8, temperature=1.0, key=key, batch_size=SHARD,
                    dist=Distributed(), ui=SILENT)
    hook = teacher.register_forward_pre_hook(partial(count, kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        build(teacher, examples, directory=tmp_path / "cache")
    hook.remove()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "meta.json", "shard-00000.safetensors"]
    calls.clear()
    teacher.register_forward_pre_hook(count)
    build(teacher, examples, directory=tmp_path / "cache")
    assert len(calls) == 2  # only the two missing shards
    build(teacher, examples, directory=tmp_path / "straight")
    for name in ("meta.json", *(f"shard-0000{s}.safetensors" for s in range(3))):
        assert (tmp_path / "cache" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()

    # a cache made from other inputs (here: another temperature) is rebuilt, not reused
    assert fingerprint(kd_run(dense_dir, corpus, kd={"cache_topk": 8, "temperature": 2.0}),
                       examples) != key
    calls.clear()
    build(teacher, examples, directory=tmp_path / "cache", key="other")
    assert len(calls) == 3
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["fingerprint"] == "other"


def test_a_kd_run_reports_the_kl_and_perplexity_of_the_models_it_saved(dense_dir, pruned_dir,
                                                                        corpus, tmp_path):
    run = kd_run(dense_dir, corpus, max_steps=12, save_steps=6)
    out = tmp_path / "recovered"
    summary = run_recovery(run, pruned_dir, out)
    assert summary["steps"] == 12 and summary["kl_after"] < 0.5 * summary["kl_before"]

    _, val = build_examples(run.recipe.recover, byte_tokenizer())
    batch = {"input_ids": torch.tensor([e["input_ids"] for e in val])}
    batch["labels"] = batch["input_ids"]
    dense = logits_of(dense_dir, batch, False)
    for model_dir, when in ((pruned_dir, "before"), (out / "model", "after")):
        student = logits_of(model_dir, batch)
        kl = reference_kl(student, dense, batch["labels"], 1.0).mean()
        assert summary[f"kl_{when}"] == pytest.approx(float(kl), rel=1e-4)
        nll = torch.nn.functional.cross_entropy(student[:, :-1].flatten(0, 1),
                                                batch["labels"][:, 1:].flatten())
        assert summary[f"perplexity_{when}"] == pytest.approx(float(nll.exp()), rel=1e-4)
    # the KL is the objective: the kept checkpoint's loss is its KL (T = 1)
    assert summary["eval_loss_after"] == pytest.approx(summary["kl_after"], rel=1e-5)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_full_mode_trains_every_kept_weight_and_saves_no_adapter(dense_dir, pruned_dir, corpus,
                                                                 tmp_path):
    run = kd_run(dense_dir, corpus, objective="kd+lm", mode="full", max_steps=4, save_steps=4,
                 learning_rate=1e-3, kd={"cache_topk": 32})
    out = tmp_path / "recovered"
    summary = run_recovery(run, pruned_dir, out)
    pruned = load_project_model(pruned_dir, CPU, torch.float32)
    trained = load_project_model(out / "model", CPU, torch.float32)
    assert summary["trainable_parameters"] == sum(p.numel() for p in pruned.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(pruned.parameters(), trained.parameters())]
    assert all(changed) and not (out / "adapter").exists()
    assert sorted(p.name for p in (out / "teacher_topk").iterdir()) == [
        "meta.json", *(f"shard-0000{s}.safetensors" for s in range(3))]


def test_alpaca_rows_of_different_lengths_distil_the_same_from_cache_and_live(dense_dir,
                                                                             pruned_dir,
                                                                             tmp_path):
    """Padding in the cache build and in the Trainer's batches; only response tokens count."""
    rows = [{"instruction": f"Echo {w * (1 + i % 3)}.", "input": w if i % 2 else "",
             "output": " ".join([w] * (1 + i % 4))} for i, w in enumerate(WORDS * 3)]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run = kd_run(dense_dir, data, format="alpaca", cutoff_len=320, val_set_size=3)
    cfg = run.recipe.recover
    train, val = build_examples(cfg, byte_tokenizer())
    examples = [{**e, "kd_index": i} for i, e in enumerate([*train, *val])]
    assert len({len(e["input_ids"]) for e in examples[:6]}) > 2
    build_topk_cache(tiny_model("llama"), examples, VOCAB, 1.0, tmp_path / "cache", "key", 4,
                     Distributed(), SILENT)
    losses = []
    for teacher in (TopKCache(tmp_path / "cache", 1.0), LiveTeacher(tiny_model("llama"), 1.0)):
        trainer = make_trainer(
            load_project_model(pruned_dir, CPU, torch.float32), byte_tokenizer(), train, val, cfg,
            training_arguments(cfg, tmp_path / "ck", CPU, torch.float32, len(train), True),
            trainer_class=partial(DistillTrainer, teacher=teacher, kd=cfg.kd, objective="kd"))
        batch = trainer.data_collator(examples[:6])
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trainer.model, dict(batch))))
    student = logits_of(pruned_dir, batch)
    kl = reference_kl(student, logits_of(dense_dir, batch, False), batch["labels"], 1.0)
    assert len(kl) == sum(sum(label != IGNORE for label in e["labels"][1:]) for e in examples[:6])
    assert losses[0] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert losses[1] == pytest.approx(float(kl.mean()), rel=1e-5)
