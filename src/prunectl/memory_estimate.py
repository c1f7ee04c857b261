"""Memory a step will need, said before it starts, and a refusal instead of a late out-of-memory.

The estimate is deliberately simple and on the safe side: weights (exact, from the model's
config on the meta device), the activations of one batch through one layer, the LM head's logits
chunk, and what the step adds (fp32 gradient accumulators for Taylor scoring, saved activations
for training).  A block search's boundary cache is reported but not counted against the device:
the search keeps it where it fits (device, host, or every n-th boundary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from prunectl.errors import UserError

GiB = 1024**3


@dataclass
class MemoryEstimate:
    step: str
    device_bytes: int
    host_bytes: int
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        return (f"{self.step} needs about {self.device_bytes / GiB:.2f} GiB on the device and "
                f"{self.host_bytes / GiB:.2f} GiB of host memory ({parts} GiB)")


def sizes(config: Any) -> dict[str, int]:
    """Exact parameter counts from a config through the one accounting (no memory used):
    the model, its input embedding (as large as an untied LM head), one layer, the layers."""
    from prunectl.modeling import cost, structure

    s = structure.from_config(config)
    return {"total": cost.account(s).params["total"], "input_embedding": s.vocab * s.hidden,
            "layer": sum(cost.block_parameters(s, 0).values()), "layers": len(s.layers)}


def estimate(step: str, config: Any, recipe: Any, dtype: torch.dtype) -> MemoryEstimate:
    counts = sizes(config)
    size = torch.empty((), dtype=dtype).element_size()
    hidden, inter = config.hidden_size, config.intermediate_size
    weights = counts["total"] * size
    if step == "eval":
        batch, seqlen = recipe.eval.perplexity.batch_size, recipe.eval.perplexity.seqlen
    elif step == "recover":
        batch, seqlen = recipe.recover.micro_batch_size, recipe.recover.cutoff_len
    else:
        batch, seqlen = recipe.calibration.batch_size, recipe.calibration.seqlen
    tokens = batch * seqlen
    parts = {"weights": weights,
             "activations": tokens * (4 * hidden + 3 * inter) * 4,
             "logits": min(tokens, 4096) * config.vocab_size * 4}
    layerwise = recipe.execution.mode == "layerwise"
    if layerwise:  # one layer, and the larger of the embeddings / LM head, at a time
        parts["weights"] = (counts["layer"] + counts["input_embedding"]) * size
    method = recipe.method.name
    if step == "score" and method == "taylor":
        parts["gradient accumulators"] = counts["total"] * 4 * (2 if recipe.method.importance == "element2" else 1)
        parts["saved activations"] = parts["activations"] * counts["layers"]
    if step == "recover":
        parts["saved activations"] = parts["activations"] * counts["layers"]
        if recipe.recover.mode == "full":
            parts["gradients and AdamW states"] = counts["total"] * 12
        if recipe.recover.objective != "lm" and recipe.recover.kd.cache_topk is None:
            parts["live teacher"] = weights + parts["logits"]
    if step == "search" and method in ("block", "shortgpt"):
        cache = recipe.calibration.nsamples * seqlen * hidden * size * (2 * counts["layers"] + 1)
        host_cache = cache
    else:
        host_cache = 0
    device_bytes = sum(parts.values())
    host_bytes = (weights if layerwise else 0) + host_cache
    if host_cache:
        parts["boundary cache (kept where it fits)"] = host_cache
    return MemoryEstimate(step, device_bytes, host_bytes, parts)


def available(device: torch.device) -> tuple[int | None, int]:
    """(free device bytes, or None on the CPU; available host bytes)."""
    import psutil

    host = psutil.virtual_memory().available
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], host
    return None, host


def check(estimate_: MemoryEstimate, device: torch.device, budget_gb: float | None = None) -> None:
    """Refuse a step that cannot fit, naming the settings that would make it fit; ``budget_gb``
    (``execution.memory_budget_gb``) caps what the device, or on the CPU the host, may give."""
    free_device, free_host = available(device)
    on_cpu = free_device is None
    need_host = estimate_.host_bytes + (estimate_.device_bytes if on_cpu else 0)
    hint = ("set execution.mode: layerwise, model.device_map: auto, or a smaller batch_size"
            if not on_cpu else "use a smaller batch_size or seqlen, or a machine with more memory")
    if budget_gb is not None and (need_host if on_cpu else estimate_.device_bytes) > budget_gb * GiB:
        raise UserError(f"{estimate_.describe()}, more than execution.memory_budget_gb="
                        f"{budget_gb} allows; raise it, or {hint}")
    if not on_cpu and estimate_.device_bytes > free_device:
        raise UserError(f"{estimate_.describe()}, but only {free_device / GiB:.2f} GiB are free on "
                        f"{device}; {hint}")
    if need_host > free_host:
        raise UserError(f"{estimate_.describe()}, but only {free_host / GiB:.2f} GiB of host memory "
                        f"are available; {hint}")
