"""What can be checked before anything is computed: the recipe against the model's config (no
weights) and the method against its target.  ``run`` and every step call it when a recipe is
new; ``prunectl validate`` calls it alone, with a stand-in config where the model is far away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunectl.errors import UserError


def stand_in_config(recipe: Any, given: Path | None = None) -> Any:
    """The config ``validate`` checks against when the model's own is not on this disk:
    ``given`` (``--config``), else ``model.config``, else a hub model's ``config.json`` from the
    cache or the hub (an unreachable hub is an error at once, naming the local fix); None for a
    local model, whose own config ``check`` reads."""
    from prunectl import hub

    path = Path(given).expanduser().resolve() if given is not None else (
        Path(recipe.model.config) if recipe.model.config else None)
    model = str(recipe.model.path)
    if path is None:
        if Path(model).expanduser().exists() or model.endswith(".gguf"):
            return None
        path = hub.config_file(model, recipe.model.revision)
    where = "--config" if given is not None else "model.config"
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{where}: {path} is neither a config.json file nor a folder holding "
                        "one; give the model's config.json (or its folder)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(file))
    except (OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{where}: {file} is not a model config ({first}); give the model's "
                        "config.json") from None


def check(recipe: Any, config: Any = None) -> Any:
    """Refuse a recipe that cannot run (unknown architecture, missing weights or weights of
    other shapes, a block past the last layer, calibration windows longer than the model's
    positions, a target the method or the model cannot meet, data that is neither a named
    dataset nor a file here, LoRA modules, eval tasks or a memory budget that cannot be), from
    the config alone: nothing is written or pinned before it passes.  Returns the model's Hugging
    Face config (``config``, a stand-in, replaces the model's own and its weights are not read)."""
    from prunectl.methods.inputs import Inputs, Target
    from prunectl.methods.registry import create_method
    from prunectl.modeling.adapters import family_for
    from prunectl.modeling.loading import check_weight_files, check_weight_shapes, load_config
    from prunectl.modeling.structure import meta_model

    method = create_method(recipe.method)
    target = Target.of(recipe.target).check(method)
    _check_data(recipe, method)
    stand_in = config is not None
    if stand_in:
        family_for(getattr(config, "model_type", "?"))
    else:
        config = load_config(recipe.model)
        check_weight_files(recipe.model)
    if not getattr(config, "num_hidden_layers", 1):
        raise UserError(f"{recipe.model.path}: its config has num_hidden_layers: 0, no decoder "
                        "layer to prune; fix the config or model.path")
    model = meta_model(config)
    if not stand_in:
        check_weight_shapes(recipe.model, model)
    method.check(config)
    limit = getattr(config, "max_position_embeddings", None)
    if method.pipeline.reads_tokens and limit and recipe.calibration.seqlen > limit:
        raise UserError(f"calibration.seqlen={recipe.calibration.seqlen} exceeds the model's "
                        f"max_position_embeddings={limit}; set calibration.seqlen to at most {limit}")
    method.check_target(Inputs(model=model, target=target))
    _check_lora_targets(recipe, model)
    _check_memory_budget(recipe, config)
    if recipe.eval.tasks or recipe.eval.task_paths:
        from prunectl.evaluation.tasks import check_tasks

        check_tasks(recipe.eval.tasks, recipe.eval.task_paths)
    return config


def _check_data(recipe: Any, method: Any) -> None:
    """Calibration (when the method reads any) and perplexity data must be a named dataset or a
    local file or folder (the recipe's paths are absolute by now)."""
    from prunectl.data.sources import ACCEPTED, BUILTIN, NAMED

    named = [("eval.perplexity.datasets", d) for d in recipe.eval.perplexity.datasets]
    if method.pipeline.reads_tokens:
        named.insert(0, ("calibration.dataset", recipe.calibration.dataset))
    for key, dataset in named:
        if dataset not in NAMED and dataset != BUILTIN and not Path(dataset).expanduser().exists():
            raise UserError(f"{key}: {dataset} is neither a named dataset nor a file or folder "
                            f"here; use {ACCEPTED}")


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
    from prunectl.memory_estimate import GiB, sizes

    size = 4 if recipe.model.dtype == "float32" else 2  # auto: at least half precision
    layer = sizes(config)["layer"] * size
    if budget * GiB < layer:
        raise UserError(f"execution.memory_budget_gb={budget} is below the {layer / GiB:.3g} GiB "
                        "of one decoder layer's weights, which every step holds at once; raise "
                        "it or remove the key (default: what is free)")


def describe(recipe: Any, config: Any) -> str:
    """One line on what the recipe would prune, from the config alone: the method as resolved,
    the model, the target with its base, and the parameters it removes where the target fixes
    them (a block target leaves the choice, so its range)."""
    from prunectl.methods.inputs import Target
    from prunectl.modeling import cost, structure

    shape = structure.from_config(config)
    counts = cost.account(shape).params
    layer = shape.layers[0]
    model = (f"ok: {recipe.method.name} on {config.model_type}, {len(shape.layers)} layers, "
             f"{layer.heads} heads / {layer.kv_heads} KV heads, {counts['total']:,} parameters")
    return f"{model}; target: {_target(Target.of(recipe.target), recipe.method, shape, counts)}"


def _target(target: Any, method: Any, shape: Any, counts: dict[str, int]) -> str:
    from prunectl.modeling import cost

    total = counts["total"]
    if target.kind == "params":
        if target.params is not None:
            remove, what = target.params, f"params {target.params:,}"
        else:
            bases = {**counts, "layers": sum(cost.layer_weights(shape, i)
                                             for i in range(len(shape.layers)))}
            base = bases[target.ratio_of]
            remove = round(target.params_ratio * base)
            what = f"params_ratio {target.params_ratio} of {target.ratio_of} ({base:,})"
        return f"{what}, removes {remove:,} parameters ({remove / total:.2%} of {total:,})"
    if target.kind == "units":
        return (f"params_ratio {target.params_ratio} of units, removes that share of the heads "
                "and MLP channels of every pruned layer")
    if target.kind == "blocks":
        kind = "layer" if method.name == "shortgpt" else getattr(method, "block_type", "mix")
        kinds = {"layer": ("attn", "mlp"), "mha": ("attn",), "mlp": ("mlp",)}.get(
            kind, ("attn", "mlp"))
        per_layer = [cost.block_parameters(shape, i) for i in range(len(shape.layers))]
        sizes = sorted(s for s in (
            [sum(b[k] for k in kinds) for b in per_layer] if kind == "layer"
            else [b[k] for b in per_layer for k in kinds]) if s)
        n, unit = target.blocks, {"layer": "layers", "mha": "attention blocks",
                                  "mlp": "MLP blocks"}.get(kind, "attention/MLP blocks")
        low, high = sum(sizes[:n]), sum(sizes[-n:]) if n else 0
        return (f"blocks {n} of {len(sizes)} {unit}, removes {low:,} to "
                f"{high:,} parameters ({low / total:.2%} to {high / total:.2%}; the search "
                "picks which)")
    if target.kind == "experts":
        return f"experts_ratio {target.experts_ratio}, removes that share of every MoE layer's experts"
    if target.kind == "budget":
        given = [f"{k} {v}" for k in ("params_ratio", "params", "kv_cache_ratio", "flops_ratio")
                 if (v := getattr(target, k)) is not None]
        return ", ".join(given) + " (the search meets every one)"
    return "none (the method's own amount)"
