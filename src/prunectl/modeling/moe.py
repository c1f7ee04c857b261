"""One mixture-of-experts block run expert by expert, so each routed expert's own output is seen.

The stock blocks (transformers 5: experts stacked in ``gate_up_proj`` [E, 2I, H] and ``down_proj``
[E, H, I], dispatched to grouped kernels) return only the gate-weighted sum.  Expert-pruning
criteria need every routed expert's output before it is weighted, so this runs the block's own
router, then each expert on the tokens routed to it, and sums them the way the block does (plus
Qwen2-MoE's sigmoid-gated shared expert).  The experts run once; the block output is built from
the same outputs, so calibration never runs an expert twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Routed:
    """What the router chose for each token of a flattened batch, and what the experts gave."""

    index: torch.Tensor  # [tokens, top_k] experts picked
    weights: torch.Tensor  # [tokens, top_k] the gate values the block multiplies their outputs by
    norms: torch.Tensor  # [tokens, top_k] float32 L2 norm of each picked expert's raw output


def expert_output(experts: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` on rows ``x``: ``down(act(gate(x)) * up(x))`` from the stacked weights."""
    gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
    return F.linear(experts.act_fn(gate) * up, experts.down_proj[e])


def moe_forward(block: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, Routed]:
    """The block's output for ``hidden`` ([..., H], already normed) and its routing record."""
    shape = hidden.shape
    x = hidden.reshape(-1, shape[-1])
    _, weights, index = block.gate(x)
    out = torch.zeros_like(x)
    norms = torch.zeros(index.shape, dtype=torch.float32, device=x.device)
    for e in index.unique().tolist():
        token, slot = torch.where(index == e)
        y = expert_output(block.experts, e, x[token])
        norms[token, slot] = torch.linalg.vector_norm(y.float(), dim=-1)
        out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
    shared = getattr(block, "shared_expert", None)
    if shared is not None:  # Qwen2-MoE: always on, gated per token
        out = out + torch.sigmoid(block.shared_expert_gate(x)) * shared(x)
    return out.reshape(shape), Routed(index, weights, norms)
