"""Perplexity the standard way, and the summed token NLL it is built on.

Standard (as in the GPTQ/SparseGPT, LLM-Pruner, FLAP and BlockPruner evaluation scripts): the
evaluation split's rows joined with ``"\\n\\n"`` and tokenized once (``prunectl.data``), cut into
non-overlapping windows of ``seqlen`` tokens with the incomplete tail dropped, each window scored
on its own (no context carried over), and ``ppl = exp(total NLL / predicted tokens)``.  Each window
predicts its ``seqlen - 1`` next tokens, which is what ``model(input_ids=w, labels=w).loss``
averages, so the figure equals the mean of those losses when every window has the same length.

Two deviations from those scripts, neither changing the number: windows are batched, and the
loss is computed from the final hidden states in chunks of tokens instead of from the full
``[batch, seqlen, vocab]`` logits, which for a 128k-token vocabulary would be the largest tensor
of the whole forward.  Sums are accumulated in float64 so thousands of windows add up exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.placement import execution_device
from prunectl.ui import SILENT


def token_nll_sum(
    hidden: torch.Tensor,
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    chunk_tokens: int = 4096,
    on_logits: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Summed next-token NLL of each row: position ``t`` predicts ``labels[:, t + 1]``.

    ``hidden`` [b, s, d] are the last decoder layer's outputs, before ``final_norm`` (pass
    ``None`` when the norm was already applied, as ``model.model(...)`` does).  Logits exist for
    about ``chunk_tokens`` positions at a time and are upcast to float32 before the log-softmax,
    as transformers' loss does.  Labels equal to -100 are ignored.  Returns float64 [b].
    ``on_logits(start, stop, logits)`` sees each float32 chunk (positions ``start .. stop-1``).
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)}"
        )
    rows, length = labels.shape
    sums = torch.zeros(rows, dtype=torch.float64, device=hidden.device)
    targets = labels[:, 1:].to(hidden.device)
    step = max(1, chunk_tokens // max(rows, 1))
    for start in range(0, length - 1, step):
        stop = min(start + step, length - 1)
        states = hidden[:, start:stop]
        if final_norm is not None:
            states = final_norm(states)
        logits = lm_head(states).float()
        if on_logits is not None:
            on_logits(start, stop, logits)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets[:, start:stop].reshape(-1),
            reduction="none",
        )
        sums += nll.view(rows, stop - start).sum(dim=1, dtype=torch.float64)
    return sums


def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    batch_size: int,
    max_windows: int | None = None,
    ui=None,
    chunk_tokens: int = 4096,
) -> dict:
    """Perplexity of ``model`` on the token stream ``tokens`` [N] in windows of ``seqlen``.

    ``model`` is any causal LM with ``.model`` (the decoder, returning normed last hidden
    states) and ``.lm_head``: every supported family and the pruned classes (the head soft-caps
    its logits where the family does, as Gemma 2).  ``max_windows``
    keeps the first windows only (a quick figure, recorded as such).  Under ``torchrun`` each
    rank scores every ``world_size``-th batch and the float64 NLL sums are added over ranks, so
    every rank returns the dict a single process computes (up to float64 summation order).
    """
    if tokens.dim() != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(tokens.shape)}")
    if seqlen < 2:
        raise UserError(f"perplexity seqlen is {seqlen}; use at least 2 tokens per window")
    available = tokens.numel() // seqlen
    if available == 0:
        raise UserError(
            f"the evaluation text has {tokens.numel()} tokens, fewer than one window of "
            f"seqlen={seqlen}; use more text or a smaller eval.perplexity.seqlen"
        )
    windows = available if max_windows is None else min(available, max_windows)
    stream = tokens[: windows * seqlen].view(windows, seqlen)
    device = execution_device(model)
    group = distributed.current()
    batches = group.shard([stream[i : i + batch_size] for i in range(0, windows, batch_size)])
    total = torch.zeros((), dtype=torch.float64, device=device)
    head = Adapter(model).head_logits
    ui = ui or SILENT
    with torch.inference_mode():
        for batch in ui.progress(batches, total=len(batches), description="perplexity"):
            batch = batch.to(device)
            hidden = model.model(input_ids=batch, use_cache=False).last_hidden_state
            total += token_nll_sum(hidden, None, head, batch, chunk_tokens).sum()
    scored = windows * (seqlen - 1)
    nll = group.sum(total).item() / scored
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "tokens_scored": scored,
        "windows": windows,
        "windows_available": available,
        "seqlen": seqlen,
        "batch_size": batch_size,
        "dropped_tail_tokens": tokens.numel() - available * seqlen,
    }
