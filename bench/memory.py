"""Peak device memory of the same work with the model whole on the device or streamed layer-wise.

Used by ``scale.py --memory``.  Each mode loads SmolLM2 afresh as ``prunectl`` does for
``execution.mode: model`` (weights on the execution device) and ``layerwise`` (weights in host
memory, ``stream_layers`` moving one piece at a time to the device), then runs two parts:

* ``search``: one full fast block-search step (boundary cache built, NLL bound refreshed, every
  candidate scored), the scaling benchmark's settings;
* ``perplexity``: ``prunectl.evaluation.perplexity`` over the same windows.

What is reported per mode and part:

* ``peak_device_bytes`` (CUDA only): ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` at the part's start, so the whole-model figure includes the
  resident weights; ``device_bytes_at_start`` shows what was already there;
* ``weights_on_device_bytes`` (any device): the most weight bytes held on the execution device at
  once, counted from the streaming schedule (every weight for the whole model; for layer-wise,
  a piece's weights from its forward pre-hook, where ``stream_layers`` moves it in, to its forward
  hook, where it goes back; tied weights once).  A count, not an allocator figure, without
  activations: on the CPU the "device" is host memory, so there is nothing separate to measure;
* ``prunectl.memory_estimate.estimate`` for the ``search`` and ``eval`` steps in both modes.

Both modes must give the same decision, candidate scores and perplexity; the comparison is part
of the report.  A part that fails on the device (out of memory, say) is reported, not hidden,
and makes ``scale.py`` exit 1.
"""

from __future__ import annotations

import gc
from collections import Counter
from functools import partial
from pathlib import Path

import torch
from block_search import load_workload

from prunectl.methods.block.search import SearchSettings, block_search
from prunectl.methods.removal_order import StopRule
from prunectl.pipelines.blocks.runner import Units

MODES = ("model", "layerwise")
PARTS = ("search", "perplexity")
MiB = 1024**2


class ResidentWeights:
    """Weight bytes on the execution device now and at most since ``restart``."""

    def __init__(self, model: torch.nn.Module, streamed: bool):
        from prunectl.modeling.placement import pieces

        unique = {id(p): p for p in model.parameters()}
        self.sizes = {key: p.numel() * p.element_size() for key, p in unique.items()}
        self.holders: Counter[int] = Counter()  # parameter id -> running pieces that hold it
        self.current = 0 if streamed else sum(self.sizes.values())
        self.peak = self.current
        if streamed:
            for piece in pieces(model):
                keys = [id(p) for p in piece.parameters()]
                piece.register_forward_pre_hook(partial(self._enter, keys))
                piece.register_forward_hook(partial(self._leave, keys))

    def restart(self) -> None:
        self.peak = self.current

    def _enter(self, keys: list[int], module, args) -> None:
        for key in keys:
            self.holders[key] += 1
            if self.holders[key] == 1:
                self.current += self.sizes[key]
        self.peak = max(self.peak, self.current)

    def _leave(self, keys: list[int], module, args, output) -> None:
        for key in keys:
            self.holders[key] -= 1
            if self.holders[key] == 0:
                self.current -= self.sizes[key]


def _measured(work, device: torch.device, resident: ResidentWeights) -> tuple[object, dict]:
    """``work()`` and its memory figures."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        at_start = torch.cuda.memory_allocated(device)
    resident.restart()
    result = work()
    figures = {"weights_on_device_bytes": resident.peak}
    if cuda:
        torch.cuda.synchronize(device)
        figures |= {"peak_device_bytes": torch.cuda.max_memory_allocated(device),
                    "device_bytes_at_start": at_start}
    return result, figures


def _run_mode(mode: str, gguf: Path, args, device: torch.device) -> tuple[dict, dict]:
    """Load the model for ``mode`` and run both parts: (memory figures, results) per part.

    A part that raises a ``RuntimeError`` (out of memory, or tensors on two devices) gets its
    error message instead of figures; the other part still runs."""
    from prunectl.evaluation.perplexity import perplexity
    from prunectl.modeling.placement import stream_layers

    layerwise = mode == "layerwise"
    work = load_workload(args, gguf, torch.device("cpu") if layerwise else device)
    model, tokens, names, params = work.model, work.tokens, work.names, work.params
    if layerwise:
        stream_layers(model, device)
    resident = ResidentWeights(model, layerwise)

    def search() -> dict:
        record = block_search(Units(model, tokens, args.batch_size), names, StopRule(blocks=1),
                              params, SearchSettings(batch_size=args.batch_size)).decisions[0]
        return {k: record[k] for k in ("removed", "perplexity", "dense_perplexity", "scores")}

    def eval_perplexity() -> float:
        return perplexity(model, tokens.view(-1), args.seqlen, args.batch_size)["perplexity"]

    memory, results = {}, {}
    for part, work in zip(PARTS, (search, eval_perplexity)):
        try:
            results[part], memory[part] = _measured(work, device, resident)
        except RuntimeError as error:  # out of memory, or a device mismatch: that is the finding
            memory[part] = {"error": f"{type(error).__name__}: "
                                     f"{str(error).strip().splitlines()[0]}"}
    return memory, results


def _estimates(gguf: Path, args, mode: str) -> dict[str, int]:
    """Device bytes ``prunectl.memory_estimate.estimate`` predicts for the search and eval steps."""
    from prunectl import memory_estimate
    from prunectl.modeling.loading import load_config
    from prunectl.recipe.load import load_recipe

    recipe, _ = load_recipe(None, pinned={
        "model": {"path": str(gguf)}, "method": {"name": "block"},
        "calibration": {"nsamples": args.windows, "seqlen": args.seqlen,
                        "batch_size": args.batch_size},
        "eval": {"perplexity": {"seqlen": args.seqlen, "batch_size": args.batch_size}},
        "execution": {"mode": mode}})
    config = load_config(recipe.model)
    return {step: memory_estimate.estimate(step, config, recipe, torch.float32).device_bytes
            for step in ("search", "eval")}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _compare(a: dict, b: dict) -> dict | None:
    """Whether the two modes' results agree, and the largest relative perplexity difference
    (the step's candidates, its dense perplexity, the perplexity pass), over the parts both ran."""
    pairs, identical = [], True
    if "search" in a and "search" in b:
        x, y = a["search"], b["search"]
        identical = x == y
        pairs += [(x[k], y[k]) for k in ("perplexity", "dense_perplexity")]
        pairs += [(x["scores"][c]["ppl"], y["scores"][c]["ppl"])
                  for c in x["scores"].keys() & y["scores"].keys()]
    if "perplexity" in a and "perplexity" in b:
        identical &= a["perplexity"] == b["perplexity"]
        pairs.append((a["perplexity"], b["perplexity"]))
    if not pairs:
        return None
    return {"identical": identical, "max_rel_ppl_diff": max(abs(p - q) / p for p, q in pairs)}


def measure(gguf: Path, args, device: torch.device) -> dict:
    """Both modes on ``device``: memory figures, estimates, and whether the results agree."""
    report = {"device": str(device), "dtype": "float32",
              "workload": "one fast block-search step (all candidates), then perplexity of "
                          "the same windows",
              "estimate_device_bytes": {mode: _estimates(gguf, args, mode) for mode in MODES}}
    results = {}
    for mode in MODES:
        _free(device)
        report[mode], results[mode] = _run_mode(mode, gguf, args, device)
    _free(device)
    report["errors"] = [f"{mode} {part}: {figures['error']}" for mode in MODES
                        for part, figures in report[mode].items() if "error" in figures]
    report["decision"] = {mode: r["search"]["removed"] for mode, r in results.items()
                          if "search" in r}
    report["agreement"] = _compare(results["model"], results["layerwise"])
    return report


def _ratio(whole: int | None, layerwise: int | None) -> str:
    return f"{whole / layerwise:6.2f}x" if whole and layerwise else "     -"


def print_report(report: dict) -> None:
    """The figures as a small table, whole model against layer-wise."""
    cuda = report["device"].startswith("cuda")
    print(f"\nmemory on {report['device']} ({report['dtype']}): {report['workload']}")
    print(f"{'':40}{'whole model':>12}{'layer-wise':>12}{'ratio':>9}")

    def row(label: str, whole: int | None, layerwise: int | None) -> None:
        cells = [f"{v / MiB:8.1f} MiB" if v is not None else f"{'-':>12}"
                 for v in (whole, layerwise)]
        print(f"{label:40}{cells[0]:>12}{cells[1]:>12}{_ratio(whole, layerwise):>9}")

    def figure(mode: str, part: str, key: str) -> int | None:
        return report[mode].get(part, {}).get(key)

    for part in PARTS:
        if cuda:
            row(f"{part}: peak allocated (measured)", figure("model", part, "peak_device_bytes"),
                figure("layerwise", part, "peak_device_bytes"))
        row(f"{part}: weights on device (counted)",
            figure("model", part, "weights_on_device_bytes"),
            figure("layerwise", part, "weights_on_device_bytes"))
    estimates = report["estimate_device_bytes"]
    for step in ("search", "eval"):
        row(f"{step}: memory_estimate.estimate", estimates["model"][step], estimates["layerwise"][step])
    if not cuda:
        print("peak device memory is measured on CUDA only: on the CPU the weights, activations "
              "and caches of both modes share host memory; the counted row is the streaming "
              "schedule's weights, without activations")
    for error in report["errors"]:
        print(f"failed: {error}")
    if report["agreement"] is not None:
        agreement = report["agreement"]
        print(f"same results in both modes: {agreement['identical']} (decision "
              f"{report['decision']}; max rel perplexity diff over the step's candidates, its "
              f"dense perplexity and the perplexity pass: {agreement['max_rel_ppl_diff']:.2e})")
