"""The recipe's parameter target as one number: how many parameters to remove.

Papers state sizes over different bases: FLAP's ratio is of the decoder layers' attention and MLP
weights, LLM-Pruner's ``pruning_ratio`` is the share of heads and channels inside the pruned layer
range, scaling-law papers leave the embeddings out.  ``target.ratio_of`` names the base and this
module is the one place that turns it (or ``target.params``, an absolute count) into a budget, so
every method removes the same amount for the same recipe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunectl.errors import UserError
from prunectl.modeling import cost
from prunectl.modeling.structure import from_model

@dataclass(frozen=True)
class ParamsBudget:
    """A resolved parameter target: ``remove`` parameters out of the dense ``total``."""

    remove: int
    total: int
    non_embedding: int
    ratio: float | None  # target.params_ratio (None with target.params)
    ratio_of: str
    base: int  # the parameters the ratio is a share of

    @property
    def dense(self) -> dict[str, int]:
        """The dense counts ``cost.Account.achieved`` compares against."""
        return {"total": self.total, "non_embedding": self.non_embedding}

    @property
    def unit_ratio(self) -> float | None:
        """The share of heads and channels per pruned layer (``ratio_of: units`` only)."""
        return self.ratio if self.ratio_of == "units" else None

    @property
    def label(self) -> str:
        if self.ratio is None:
            return f"target.params={self.remove}"
        of = "" if self.ratio_of == "total" else f" of {self.ratio_of}"
        return f"target.params_ratio={self.ratio}{of}"

    def achieved(self) -> dict[str, Any]:
        """What a plan's ``achieved`` records about the target."""
        return {"target_params_ratio": self.ratio, "target_ratio_of": self.ratio_of,
                "target_params_removed": self.remove}


def ratio_bases(model: nn.Module, layers: Iterable[int] | None = None) -> dict[str, int]:
    """Parameters each ``ratio_of`` is a share of; ``units`` counts the pruned ``layers`` only."""
    structure = from_model(model)
    counts = cost.parameters(structure)
    body = {i: cost.layer_weights(structure, i) for i in range(len(structure.layers))}
    pruned = body if layers is None else {i: body[i] for i in layers}
    return {"total": counts["total"], "non_embedding": counts["non_embedding"],
            "layers": sum(body.values()), "units": sum(pruned.values())}


def resolve_params_target(
    target: Any, model: nn.Module, method: str, layers: Iterable[int] | None = None
) -> ParamsBudget:
    """``target`` (the recipe's section) as a :class:`ParamsBudget` for ``model``.

    ``layers`` is the method's pruned layer range (default: all), the base of ``ratio_of:
    units``.  A target that asks for blocks, or for nothing, is a user error naming the keys.
    """
    ratio = getattr(target, "params_ratio", None)
    params = getattr(target, "params", None)
    ratio_of = getattr(target, "ratio_of", "total")
    if ratio is None and params is None:
        raise UserError(
            f"{method} needs target.params_ratio or target.params (parameters to remove, "
            "e.g. --ratio 0.2), not target.blocks"
        )
    bases = ratio_bases(model, layers)
    if params is not None:
        if params >= bases["total"]:
            raise UserError(
                f"target.params={params} is not below the model's {bases['total']:,} "
                "parameters; lower it"
            )
        return ParamsBudget(params, bases["total"], bases["non_embedding"], None, "total",
                            bases["total"])
    return ParamsBudget(round(ratio * bases[ratio_of]), bases["total"], bases["non_embedding"],
                        ratio, ratio_of, bases[ratio_of])
