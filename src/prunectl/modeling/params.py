"""Parameter counts, the unit every target ratio and report is expressed in.

Counts are of unique tensors: tied input/output embeddings are one matrix and count once, the way
Hugging Face's ``num_parameters`` and the papers' tables count them.  ``non_embedding`` leaves out
the input embedding and an untied ``lm_head`` (the convention of scaling-law papers), so a ratio over
it says how much of the transformer body was removed.
"""

from __future__ import annotations

from torch import nn


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "non_embedding", "embedding"}`` for a causal LM (tied embeddings counted once)."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    embed = model.get_input_embeddings().weight
    embedding = embed.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embed:
        embedding += _numel(head)
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


def _norms(adapter, i: int, block: str) -> int:
    return sum(_numel(norm) for norm in adapter.block_norms(i, block).values())


def block_parameters(adapter, i: int) -> dict[str, int]:
    """Parameters of layer ``i``'s attention and MLP residual blocks, each with its own norms.

    A removed block counts 0, so the sum over a model's blocks plus embeddings, final norm and
    head is its total.
    """
    attn = adapter.attention(i)
    mlp = adapter.mlp(i)
    return {
        "attn": 0 if attn is None else _numel(attn) + _norms(adapter, i, "attention"),
        "mlp": 0 if mlp is None else _numel(mlp) + _norms(adapter, i, "mlp"),
    }
