"""How many routed experts each MoE layer loses, from the recipe's ``target``.

REAP removes the same share of experts from every layer (``int(E * ratio)``, as the reference
computes it).  A parameter target picks the smallest such uniform count whose removed experts
(their stacked weights and router rows) reach the target's parameters (any ``ratio_of`` but
``units``, or ``params``, through ``methods/target.py``).  Every layer keeps at
least ``num_experts_per_tok`` experts, or top-k routing would have nothing to pick; targets that
need fewer are refused before anything is computed.
"""

from __future__ import annotations

import math
from dataclasses import replace

from prunectl.errors import UserError
from prunectl.methods.target import resolve_params_target
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.structure import from_model


def moe_layers(adapter: Adapter) -> list[int]:
    """Layers whose MLP block holds routed experts (Qwen-MoE may have dense ones)."""
    layers = [i for i in range(adapter.num_layers) if adapter.experts(i) is not None]
    if not layers:
        raise UserError("this model has no mixture-of-experts layer left; reap removes experts")
    return layers


def expert_parameters(adapter: Adapter, i: int) -> int:
    """Parameters one routed expert of layer ``i`` holds, its router row included (from the
    cost model)."""
    s = from_model(adapter.model)
    layer = s.layers[i]
    return cost.mlp_parameters(s, layer) - cost.mlp_parameters(
        s, replace(layer, experts=layer.experts - 1))


def experts_to_remove(adapter: Adapter, target) -> dict[int, int]:
    """Layer index → number of its routed experts to remove."""
    layers = moe_layers(adapter)
    counts = {i: adapter.num_experts(i) for i in layers}
    k = adapter.top_k
    ratio = target.experts_ratio
    if ratio is None and target.params_ratio is None and getattr(target, "params", None) is None:
        raise UserError("reap removes whole experts: set target.experts_ratio (share of each "
                        "layer's experts, e.g. 0.25) or target.params_ratio")
    if ratio is not None:
        removals = {i: int(n * ratio) for i, n in counts.items()}
        if not any(removals.values()):
            raise UserError(f"target.experts_ratio={ratio} removes no expert of "
                            f"{max(counts.values())}; raise it to at least "
                            f"{1 / max(counts.values()):.4f}")
        short = [i for i in layers if counts[i] - removals[i] < k]
        if short:
            i = short[0]
            raise UserError(f"target.experts_ratio={ratio} leaves layers.{i} "
                            f"{counts[i] - removals[i]} experts but the router picks {k} per "
                            f"token; lower it to at most {(counts[i] - k) / counts[i]:.4f}")
        return removals
    goal = resolve_params_target(target, adapter.model, "reap")
    per_step = sum(expert_parameters(adapter, i) for i in layers)
    most = min(counts.values()) - k
    n = math.ceil(goal.remove / per_step)
    if n > most:
        raise UserError(f"{goal.label} is out of reach: keeping {k} experts "
                        f"per layer (the router's top-k) removes at most "
                        f"{most * per_step / goal.total:.4f} of the parameters; lower it")
    return {i: n for i in layers}
