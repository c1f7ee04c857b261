"""What every pruning method provides, step by step.

A method is a small class configured by its own pydantic ``Config`` (the recipe's ``method``
section).  The steps call it in order; each hook receives the run context and the artefacts the
previous steps saved, and returns plain tensors or a :class:`Plan` that the step persists.  Pure
tensor math lives beside the method in functions with no hooks and no I/O, which is what the unit
tests exercise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from prunectl.methods.plan import Plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunectl.context import RunContext


class MethodConfig(BaseModel):
    """Base of every method's recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    name: str


class Method:
    """Default hooks; a method overrides the ones it needs."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: True when ``calibrate`` must run the model to collect activation statistics.
    uses_statistics: ClassVar[bool] = False
    #: True when the method reads calibration tokens at all (``mag-sp`` and ``manual`` do not).
    uses_calibration: ClassVar[bool] = True
    #: the target kinds the method can meet (``blocks``; ``params``: a ratio of total,
    #: non_embedding or layers, or a count; ``units``: ``ratio_of: units``), checked before
    #: anything runs
    targets: ClassVar[frozenset[str]] = frozenset({"blocks", "params", "units"})
    #: True when ``apply`` needs the calibration tokens (``tokens=``): a least-squares
    #: reconstruction runs its sequential pass there.
    apply_uses_tokens: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config

    def check(self, config: Any) -> None:
        """Refuse settings this model cannot take (a block index past its last layer, say)
        before anything is computed; ``config`` is the model's Hugging Face config."""

    def statistics(
        self, run: RunContext, model: nn.Module, tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Activation statistics from calibration tokens (``calibrate`` step)."""
        return {}

    def score(
        self,
        run: RunContext,
        model: nn.Module,
        tokens: torch.Tensor,
        stats: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Importance scores (``score`` step); saved to ``scores/scores.safetensors``."""
        return {}

    def search(
        self,
        run: RunContext,
        model: nn.Module,
        tokens: torch.Tensor,
        scores: dict[str, torch.Tensor],
    ) -> Plan:
        """Decide what to remove (``search`` step); saved to ``search/plan.json``."""
        raise NotImplementedError

    def apply(
        self, run: RunContext, model: nn.Module, plan: Plan, stats: dict[str, torch.Tensor]
    ) -> nn.Module:
        """Remove what the plan says, physically (``apply`` step)."""
        from prunectl.modeling.surgery import apply_plan

        return apply_plan(model, plan)
