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
    """Refuse a recipe that cannot run (unknown architecture, missing weights, a block past the
    last layer, calibration windows longer than the model's positions, a target the method cannot
    meet, data that is neither a named dataset nor a file here); returns the model's Hugging
    Face config (``config``, a stand-in, replaces the model's own)."""
    from prunectl.methods.inputs import Target
    from prunectl.methods.registry import create_method
    from prunectl.modeling.adapters import family_for
    from prunectl.modeling.loading import check_weight_files, load_config

    method = create_method(recipe.method)
    Target.of(recipe.target).check(method)
    _check_data(recipe, method)
    if config is None:
        config = load_config(recipe.model)
    else:
        family_for(getattr(config, "model_type", "?"))
    check_weight_files(recipe.model)
    method.check(config)
    limit = getattr(config, "max_position_embeddings", None)
    if method.pipeline.reads_tokens and limit and recipe.calibration.seqlen > limit:
        raise UserError(f"calibration.seqlen={recipe.calibration.seqlen} exceeds the model's "
                        f"max_position_embeddings={limit}; set calibration.seqlen to at most {limit}")
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
