"""The plan: what to remove, written by ``search`` and read by ``apply``.

A plan is plain data (JSON in ``search/plan.json``) so a published or hand-edited plan can be
applied.  Indices always refer to the dense model's numbering.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LayerPlan(BaseModel):
    """What one decoder layer keeps.  ``None`` means "all of it"."""

    model_config = ConfigDict(extra="forbid")

    attention: bool = True  # False: the attention residual block is removed
    mlp: bool = True  # False: the MLP residual block is removed
    q_heads: list[int] | None = None  # kept query heads, original numbering, grouped by KV head
    kv_heads: list[int] | None = None  # kept KV heads (each kept query head's KV head is kept)
    mlp_channels: list[int] | None = None  # kept intermediate channels


class Plan(BaseModel):
    """A complete pruning decision for one model."""

    model_config = ConfigDict(extra="forbid")

    method: str
    layers: dict[int, LayerPlan] = Field(default_factory=dict)  # layers absent: unchanged
    hidden_channels: list[int] | None = None  # kept hidden dimensions (width of the residual stream)
    removal_order: list[str] = Field(default_factory=list)  # block search: full nested order
    curve: list[dict[str, Any]] = Field(default_factory=list)  # e.g. ppl after each removal
    achieved: dict[str, Any] = Field(default_factory=dict)  # parameter counts and ratios reached
    notes: list[str] = Field(default_factory=list)  # what could not be met exactly, and why

    def layer(self, i: int) -> LayerPlan:
        return self.layers.get(i, LayerPlan())
