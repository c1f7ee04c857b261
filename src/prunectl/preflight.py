"""What can be checked before anything is computed: the recipe against the model's config (no
weights) and the method against its target.  ``run`` and every step call it when a recipe is
new; ``prunectl validate`` calls it alone."""

from __future__ import annotations

from typing import Any

from prunectl.errors import UserError
from prunectl.methods.inputs import Target


def check(recipe: Any) -> Any:
    """Refuse a recipe that cannot run (unknown architecture, missing weights or weights of
    other shapes, a block past the last layer, calibration windows longer than the model's
    positions, a target the method or the model cannot meet, LoRA modules, eval tasks or a
    memory budget that cannot be), from the config alone: nothing is written or pinned before
    it passes.  Returns the model's Hugging Face config."""
    from prunectl.methods.inputs import Inputs
    from prunectl.methods.registry import create_method
    from prunectl.modeling.loading import check_weight_files, check_weight_shapes, load_config
    from prunectl.modeling.structure import meta_model

    method = create_method(recipe.method)
    target = Target.of(recipe.target).check(method)
    config = load_config(recipe.model)
    check_weight_files(recipe.model)
    if not getattr(config, "num_hidden_layers", 1):
        raise UserError(f"{recipe.model.path}: its config has num_hidden_layers: 0, no decoder "
                        "layer to prune; fix the config or model.path")
    model = meta_model(config)
    check_weight_shapes(recipe.model, model)
    method.check(config)
    limit = getattr(config, "max_position_embeddings", None)
    if method.calibration != "none" and limit and recipe.calibration.seqlen > limit:
        raise UserError(f"calibration.seqlen={recipe.calibration.seqlen} exceeds the model's "
                        f"max_position_embeddings={limit}; set calibration.seqlen to at most {limit}")
    method.check_target(Inputs(model=model, target=target))
    _check_lora_targets(recipe, model)
    _check_memory_budget(recipe, config)
    if recipe.eval.tasks or recipe.eval.task_paths:
        from prunectl.evaluation.tasks import check_tasks

        check_tasks(recipe.eval.tasks, recipe.eval.task_paths)
    return config


def _check_lora_targets(recipe: Any, model: Any) -> None:
    """``recover.target_modules`` names linear layers the model has (peft's rule: the module's
    name or its last dotted parts), or peft refuses them after the recovery set is built."""
    from torch import nn

    wanted = recipe.recover.target_modules if recipe.recover is not None else None
    if not isinstance(wanted, list) or recipe.recover.mode != "lora":
        return
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in wanted if not any(n == t or n.endswith(f".{t}") for n in linear)]
    if missing:
        have = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise UserError(f"recover.target_modules {missing} match no linear layer of the model; "
                        f"use some of {have}, or all-linear")


def _check_memory_budget(recipe: Any, config: Any) -> None:
    """A budget below one decoder layer's weights cannot hold any step, even layer by layer."""
    budget = recipe.execution.memory_budget_gb
    if budget is None:
        return
    from prunectl.resources import GiB, parameter_counts

    size = 4 if recipe.model.dtype == "float32" else 2  # auto: at least half precision
    layer = parameter_counts(config)["layer"] * size
    if budget * GiB < layer:
        raise UserError(f"execution.memory_budget_gb={budget} is below the {layer / GiB:.3g} GiB "
                        "of one decoder layer's weights, which every step holds at once; raise "
                        "it or remove the key (default: what is free)")


def describe(recipe: Any, config: Any) -> str:
    """One line on what the recipe would prune, from the config alone."""
    from prunectl.modeling import cost, structure

    shape = structure.from_config(config)
    total = cost.parameters(shape)["total"]
    layer = shape.layers[0]
    return (f"ok: {recipe.method.name} on {config.model_type}, {len(shape.layers)} layers, "
            f"{layer.heads} heads / {layer.kv_heads} KV heads, {total:,} parameters; "
            f"target: {Target.of(recipe.target).kind}")
