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
    experts: list[int] | None = None  # kept routed experts of an MoE layer (shared ones stay)


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


def parse_block_name(name: str, num_layers: int) -> tuple[int, str]:
    """``layers.N.attn`` / ``layers.N.mlp`` / ``layers.N`` → (N, "attn" | "mlp" | "layer")."""
    from prunectl.errors import UserError

    parts = name.split(".")
    valid = len(parts) in (2, 3) and parts[0] == "layers" and parts[1].isdigit()
    if valid and len(parts) == 3:
        valid = parts[2] in ("attn", "mlp")
    if not valid:
        raise UserError(
            f"block '{name}' is not a block name; use layers.N.attn, layers.N.mlp or layers.N"
        )
    index = int(parts[1])
    if index >= num_layers:
        raise UserError(f"block '{name}' is out of range; the model has layers 0..{num_layers - 1}")
    return index, parts[2] if len(parts) == 3 else "layer"


def plan_from_removals(method: str, removed: list[str], num_layers: int, **fields: Any) -> Plan:
    """A plan that removes the named residual blocks (or whole layers), e.g. a search's prefix."""
    layers: dict[int, LayerPlan] = {}
    for name in removed:
        index, kind = parse_block_name(name, num_layers)
        current = layers.get(index, LayerPlan())
        layers[index] = current.model_copy(
            update={
                "attention": current.attention and kind == "mlp",
                "mlp": current.mlp and kind == "attn",
            }
        )
    return Plan(method=method, layers=layers, **fields)
