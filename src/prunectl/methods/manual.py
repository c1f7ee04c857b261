"""``method: manual``: apply an explicit list of blocks, e.g. a published or hand-edited plan."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prunectl.methods.base import Method, MethodConfig
from prunectl.plan import Plan, parse_block_name, plan_from_removals


class ManualConfig(MethodConfig):
    name: Literal["manual"] = "manual"
    #: blocks to remove: ``layers.N.attn``, ``layers.N.mlp`` or ``layers.N`` (the whole layer)
    remove: list[str] = Field(default_factory=list)


class ManualMethod(Method):
    """No scoring: the plan is the recipe's ``remove`` list, in the order given."""

    name = "manual"
    Config = ManualConfig
    calibration = "none"

    def check(self, config) -> None:
        for name in self.config.remove:
            parse_block_name(name, config.num_hidden_layers)

    def search(self, inputs, scores) -> Plan:
        removed = list(dict.fromkeys(self.config.remove))  # keep order, drop repeats
        return plan_from_removals(
            "manual", removed, inputs.adapter.num_layers, removal_order=removed
        )
