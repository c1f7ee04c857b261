"""Per-expert routing statistics of one MoE layer and the expert-pruning criteria built on them.

REAP (Lasby et al., arXiv 2510.13999) scores expert j by the mean, over the tokens routed to it,
of ``g_j(x) * ||f_j(x)||_2``: the gate value the router gives it times the norm of its output.
The baselines its paper compares with, in the reference code's terms: ``frequency`` (how many
tokens pick the expert, ``expert_frequency``), ``gate`` (the expert's gate value summed over the
tokens that pick it, ``weighted_expert_frequency_sum``; divided here by the token count, which
makes it the mean gate value per token and ranks the same) and ``ean`` (the summed output norm,
``ean_sum``).  All four come from four sums per expert, collected in one pass and additive
across batches and ranks.

The gate value is the one the block multiplies the expert's output by: renormalised over the
top-k when the model renormalises.  The reference renormalises only when the config says
``norm_topk_prob``, so for Mixtral (which always renormalises and has no such key) it uses the
plain softmax value; here Mixtral's applied gate is used (deviation; the ranking within a token
is unchanged, the weighting across tokens differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunectl.distributed import Distributed
from prunectl.modeling.moe import Routed

SUMS = ("count", "gate_sum", "reap_sum", "ean_sum")


@dataclass
class ExpertStats:
    """Float64 sums per expert over the calibration tokens of one layer."""

    count: torch.Tensor  # tokens routed to the expert
    gate_sum: torch.Tensor  # sum of its gate values over those tokens
    reap_sum: torch.Tensor  # sum of gate value x output norm
    ean_sum: torch.Tensor  # sum of output norms
    tokens: torch.Tensor  # [1] tokens seen by the layer

    @classmethod
    def zeros(cls, num_experts: int) -> ExpertStats:
        return cls(*(torch.zeros(num_experts, dtype=torch.float64) for _ in SUMS),
                   torch.zeros(1, dtype=torch.float64))

    def update(self, routed: Routed) -> None:
        """Add one batch's routing (every row of ``routed.index`` is one token)."""
        index = routed.index.reshape(-1).cpu()
        gates = routed.weights.reshape(-1).double().cpu()
        norms = routed.norms.reshape(-1).double().cpu()
        self.count.index_add_(0, index, torch.ones_like(gates))
        self.gate_sum.index_add_(0, index, gates)
        self.reap_sum.index_add_(0, index, gates * norms)
        self.ean_sum.index_add_(0, index, norms)
        self.tokens += routed.index.shape[0]

    def merge_ranks(self, group: Distributed) -> None:
        """Sum every rank's statistics (all of them are sums)."""
        for name in (*SUMS, "tokens"):
            setattr(self, name, group.sum(getattr(self, name)))

    def as_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": getattr(self, name) for name in (*SUMS, "tokens")}

    @classmethod
    def from_dict(cls, stats: dict[str, torch.Tensor], prefix: str) -> ExpertStats | None:
        """The statistics saved under ``prefix``, or None when they are not there."""
        names = (*SUMS, "tokens")
        if any(f"{prefix}.{name}" not in stats for name in names):
            return None
        return cls(*(stats[f"{prefix}.{name}"] for name in names))

    def saliency(self, criterion: str) -> torch.Tensor:
        """Per-expert score; lower means less needed.  An expert no token picked scores 0."""
        if criterion == "reap":
            return torch.where(self.count > 0, self.reap_sum / self.count.clamp(min=1), 0.0)
        if criterion == "frequency":
            return self.count.clone()
        if criterion == "gate":
            return self.gate_sum / self.tokens.clamp(min=1)
        if criterion == "ean":
            return self.ean_sum.clone()
        raise ValueError(f"unknown criterion {criterion}")
