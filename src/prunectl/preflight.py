"""What can be checked before anything is computed: the recipe against the model's config (no
weights) and the method against its target.  ``run`` and every step call it when a recipe is
new; ``prunectl validate`` calls it alone."""

from __future__ import annotations

from typing import Any

from prunectl.errors import UserError

#: how each target kind is asked for, for the error that names what a method takes
_HOW = {"blocks": "target.blocks (--blocks N)",
        "params": "target.params_ratio (--ratio 0.2) or target.params",
        "units": "target.ratio_of: units",
        "experts": "target.experts_ratio"}


def target_kind(target: Any) -> str:
    """``blocks``, ``params``, ``units``, ``experts`` or ``none``: what the target asks for."""
    if target.blocks is not None:
        return "blocks"
    if target.experts_ratio is not None:
        return "experts"
    if target.params_ratio is not None and target.ratio_of == "units":
        return "units"
    if target.params_ratio is not None or target.params is not None:
        return "params"
    return "none"


def check(recipe: Any) -> Any:
    """Refuse a recipe that cannot run (unknown architecture, missing weights, a block past the
    last layer, calibration windows longer than the model's positions, a target the method cannot
    meet); returns the model's Hugging Face config."""
    from prunectl.methods.registry import create_method
    from prunectl.modeling.loading import check_weight_files, load_config

    method = create_method(recipe.method)
    kind = target_kind(recipe.target)
    if kind != "none" and kind not in method.targets:
        takes = " or ".join(_HOW[k] for k in sorted(method.targets))
        raise UserError(f"method {method.name} cannot meet {_HOW[kind]}; give {takes}")
    config = load_config(recipe.model)
    check_weight_files(recipe.model)
    method.check(config)
    limit = getattr(config, "max_position_embeddings", None)
    if method.uses_calibration and limit and recipe.calibration.seqlen > limit:
        raise UserError(f"calibration.seqlen={recipe.calibration.seqlen} exceeds the model's "
                        f"max_position_embeddings={limit}; set calibration.seqlen to at most {limit}")
    return config


def describe(recipe: Any, config: Any) -> str:
    """One line on what the recipe would prune, from the config alone."""
    from prunectl.modeling import cost, structure

    shape = structure.from_config(config)
    total = cost.parameters(shape)["total"]
    layer = shape.layers[0]
    return (f"ok: {recipe.method.name} on {config.model_type}, {len(shape.layers)} layers, "
            f"{layer.heads} heads / {layer.kv_heads} KV heads, {total:,} parameters; "
            f"target: {target_kind(recipe.target)}")
