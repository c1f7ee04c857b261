"""What can be checked before anything is computed: the recipe against the model's config (no
weights) and the method against its target.  ``run`` and every step call it when a recipe is
new; ``prunectl validate`` calls it alone."""

from __future__ import annotations

from typing import Any

from prunectl.errors import UserError
from prunectl.methods.inputs import Target


def check(recipe: Any) -> Any:
    """Refuse a recipe that cannot run (unknown architecture, missing weights, a block past the
    last layer, calibration windows longer than the model's positions, a target the method cannot
    meet); returns the model's Hugging Face config."""
    from prunectl.methods.registry import create_method
    from prunectl.modeling.loading import check_weight_files, load_config

    method = create_method(recipe.method)
    Target.of(recipe.target).check(method)
    config = load_config(recipe.model)
    check_weight_files(recipe.model)
    method.check(config)
    limit = getattr(config, "max_position_embeddings", None)
    if method.pipeline.reads_tokens and limit and recipe.calibration.seqlen > limit:
        raise UserError(f"calibration.seqlen={recipe.calibration.seqlen} exceeds the model's "
                        f"max_position_embeddings={limit}; set calibration.seqlen to at most {limit}")
    return config


def describe(recipe: Any, config: Any) -> str:
    """One line on what the recipe would prune, from the config alone."""
    from prunectl.modeling import cost, structure

    shape = structure.from_config(config)
    total = cost.account(shape).params["total"]
    layer = shape.layers[0]
    return (f"ok: {recipe.method.name} on {config.model_type}, {len(shape.layers)} layers, "
            f"{layer.heads} heads / {layer.kv_heads} KV heads, {total:,} parameters; "
            f"target: {Target.of(recipe.target).kind}")
