"""Throughput and memory of a model, measured the same way for the dense and the pruned one.

Structured pruning is sold on real speed-ups, so ``eval --speed`` times what a user runs:
prefill (one forward over a prompt, batch 1, at a few lengths) and greedy decoding with the KV
cache (``generate`` with ``min_new_tokens == max_new_tokens`` so every run makes the same number
of tokens).  Decode throughput counts only the steps after the first token: a logits processor
stamps the time at every step, so the prompt's forward does not dilute the figure.  Every
figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones, with min and max
beside it, and the device, thread count and library versions are recorded with the numbers:
figures from different machines are not comparable, and the file says which machine it was.

Peak memory: on CUDA the allocator's ``max_memory_allocated`` (tensors only, not the caching
allocator's reserve); on CPU the process's peak resident set size during the measurement
(Linux ``VmHWM``, reset first through ``/proc/self/clear_refs``), which includes everything
else the process holds; where that reset is unavailable, the process-lifetime ``ru_maxrss``.
The ``memory.source`` field says which one was used.
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from prunectl.errors import UserError
from prunectl.modeling.placement import execution_device

SEED = 0
DECODE_PROMPT = 32  # prompt tokens before decoding starts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(seconds: list[float], tokens: int) -> dict[str, float]:
    """Median throughput and its spread over the timed repeats."""
    rates = [tokens / s for s in seconds]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_min": min(rates),
        "tokens_per_s_max": max(rates),
        "seconds_median": statistics.median(seconds),
        "seconds": seconds,
        "repeats": len(seconds),
    }


def _repeat(run: Callable[[], float], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


class _StepClock:
    """A logits processor that only records when each decoding step's logits are ready."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def _prefill(model, ids: torch.Tensor, device: torch.device) -> float:
    kwargs = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # as generate does: the LM head only where it is needed
    _sync(device)
    start = time.perf_counter()
    model(input_ids=ids, **kwargs)
    _sync(device)
    return time.perf_counter() - start


def _decode(model, ids: torch.Tensor, new_tokens: int, pad_id: int, device: torch.device) -> float:
    """Seconds for the ``new_tokens - 1`` cached decoding steps after the first token."""
    from transformers import GenerationConfig, LogitsProcessorList

    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
    )
    clock = _StepClock(device)
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_config=config,
        logits_processor=LogitsProcessorList([clock]),
    )
    return clock.stamps[-1] - clock.stamps[0]


def _reset_peak(device: torch.device) -> str:
    """Start a fresh peak-memory window; returns how the peak will be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "cpu_peak_rss"
    except OSError:
        return "cpu_ru_maxrss_process_lifetime"


def _peak(device: torch.device, source: str) -> int:
    if source == "cuda_max_memory_allocated":
        return int(torch.cuda.max_memory_allocated(device))
    if source == "cpu_peak_rss":
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = _cpu_name()
        info["cpu_count"] = os.cpu_count()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    import transformers

    from prunectl import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prunectl": __version__,
        "cuda": torch.version.cuda or "",
    }


def disk_bytes(directory: Path | None) -> int | None:
    """Bytes of every file under ``directory`` (weights, config, tokenizer)."""
    if directory is None or not Path(directory).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def measure_speed(
    model,
    tokenizer_or_vocab,
    *,
    device: torch.device | str | None = None,
    prefill_lengths: Sequence[int] = (128, 512, 2048),
    decode_tokens: int = 64,
    decode_batches: Sequence[int] = (1, 8),
    warmup: int = 2,
    repeats: int = 5,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Prefill and decode tokens/s, peak memory, parameters and on-disk size of ``model``.

    Token ids are random (seeded): throughput does not depend on the text.  Prefill lengths
    beyond ``max_position_embeddings`` are clipped to it, and the clipping is noted.
    """
    from prunectl.modeling.params import count_parameters

    if decode_tokens < 2:
        raise UserError(
            f"decode_tokens={decode_tokens}: decoding is timed between tokens, use 2 or more"
        )
    device = torch.device(device) if device is not None else execution_device(model)
    vocab = tokenizer_or_vocab if isinstance(tokenizer_or_vocab, int) else len(tokenizer_or_vocab)
    vocab = min(vocab, model.get_input_embeddings().num_embeddings)
    pad_id = getattr(tokenizer_or_vocab, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (getattr(model.config, "eos_token_id", None) or 0)
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    max_positions = getattr(model.config, "max_position_embeddings", None) or max(prefill_lengths)
    notes = []
    lengths = sorted({min(n, max_positions) for n in prefill_lengths})
    if any(n > max_positions for n in prefill_lengths):
        notes.append(f"prefill lengths clipped to max_position_embeddings={max_positions}")
    prompt = max(1, min(DECODE_PROMPT, max_positions - decode_tokens))
    generator = torch.Generator().manual_seed(SEED)

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=generator).to(device)

    was_training = model.training
    model.eval()
    source = _reset_peak(device)
    prefill, decode = [], []
    with torch.inference_mode():
        for length in lengths:
            x = ids(1, length)
            seconds = _repeat(lambda x=x: _prefill(model, x, device), warmup, repeats)
            prefill.append({"seq_len": length, "batch": 1, **_summary(seconds, length)})
        for batch in decode_batches:
            x = ids(batch, prompt)
            seconds = _repeat(
                lambda x=x: _decode(model, x, decode_tokens, pad_id, device), warmup, repeats
            )
            decode.append(
                {
                    "batch": batch,
                    "new_tokens": decode_tokens,
                    "prompt_len": prompt,
                    **_summary(seconds, batch * (decode_tokens - 1)),
                }
            )
    peak = _peak(device, source)
    model.train(was_training)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {
        "device": device_info(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "versions": library_versions(),
        "settings": {
            "prefill_lengths": list(prefill_lengths),
            "decode_tokens": decode_tokens,
            "decode_batches": list(decode_batches),
            "warmup": warmup,
            "repeats": repeats,
            "seed": SEED,
        },
        "prefill": prefill,
        "decode": decode,
        "memory": {"peak_bytes": peak, "source": source, "weights_bytes": weights},
        "parameters": count_parameters(model),
        "disk_bytes": disk_bytes(model_dir),
        "notes": notes,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
