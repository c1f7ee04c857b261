"""Parameter counts, the unit every target ratio and report is expressed in.

Counts are of unique tensors: tied input/output embeddings are one matrix and count once, the way
Hugging Face's ``num_parameters`` and the papers' tables count them.  ``non_embedding`` leaves out
the input embedding and an untied ``lm_head`` (the convention of scaling-law papers), so a ratio over
it says how much of the transformer body was removed.  This measures a loaded model;
:mod:`prunectl.modeling.cost` computes the same counts from a structure (a config, a plan).
"""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "non_embedding", "embedding"}`` for a causal LM (tied embeddings counted once)."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    embed = model.get_input_embeddings().weight
    embedding = embed.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embed:
        embedding += sum(p.numel() for p in head.parameters())
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}

