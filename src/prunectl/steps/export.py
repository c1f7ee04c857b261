"""``export``: the shareable model directory, in the chosen dtype, with its model card."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from prunectl import __version__, hub
from prunectl.context import RunContext
from prunectl.errors import UserError
from prunectl.io import read_json, write_text
from prunectl.modeling.loading import resolve_dtype
from prunectl.modeling.pruned_format import save_model
from prunectl.steps import artifacts, export_gguf
from prunectl.steps.base import StepOutcome, StepResult, execute, recipe_sections, upstream


def export_source(run: RunContext) -> str:
    """Which project model to export: the recipe's choice, or the most finished one."""
    choice = run.recipe.export.source
    if choice == "auto":
        recovered = run.project.record("recover") or {}
        return "recovered" if recovered.get("status") == "done" else "pruned"
    return choice


def model_card(run: RunContext, role: str, directory: Path) -> str:
    """README.md of the exported model: what was removed, how, and what it measured."""
    info = read_json(run.project.path("pruned", "prunectl.json"))
    base = hub.base_model(run.recipe.model, run.recipe.export)
    if base is None:
        run.ui.warn("export: no hub id for the card's base_model; set export.base_model "
                    "(e.g. --set export.base_model=HuggingFaceTB/SmolLM2-135M-Instruct)")
    name = Path(run.recipe.model.path).name
    lines = [
        "---",
        "library_name: transformers",
        "tags: [pruned, prunectl]",
        *([f"base_model: {base}"] if base else []),
        "---",
        "",
        f"# Pruned {name} ({run.recipe.method.name})",
        "",
        f"Made with prunectl {__version__} from `{base or name}`; this is the "
        f"**{role}** model.",
        "",
        "| parameters | dense | pruned | removed |",
        "| --- | ---: | ---: | ---: |",
        f"| total | {info['dense']['total']:,} | {info['pruned']['total']:,} "
        f"| {info['params_ratio_removed']:.2%} |",
        f"| non-embedding | {info['dense']['non_embedding']:,} | {info['pruned']['non_embedding']:,} "
        f"| {info['non_embedding_ratio_removed']:.2%} |",
        "",
    ]
    removed = info.get("plan", {}).get("removal_order") or []
    if removed and info.get("blocks_removed"):
        lines += [f"Removed blocks: {', '.join(removed[: info['blocks_removed']])}", ""]
    try:
        from prunectl.evaluation.report import summary_table_markdown

        lines += ["## Evaluation", "", summary_table_markdown(run.project.root), ""]
    except (ImportError, FileNotFoundError):
        pass
    for plot in sorted(run.project.path("eval").glob("*.png")):
        shutil.copy2(plot, directory / plot.name)
        lines += [f"![{plot.stem}]({plot.name})", ""]
    if (directory / "modeling_prunectl.py").exists():
        lines += [
            "## Loading",
            "",
            "Layers differ in shape, so this model ships its modeling code (the tokenizer reads",
            "the same config, so it needs the flag too):",
            "",
            "```python",
            "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
            "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
            "```",
            "",
        ]
    recipe = yaml.safe_dump(hub.portable(run.recipe.to_dict()), sort_keys=False).strip()
    lines += ["## Recipe", "", "```yaml", recipe, "```", ""]
    return "\n".join(lines)


def key(run: RunContext, output: Path | str | None = None) -> tuple[dict, list]:
    role = export_source(run)
    sections = recipe_sections(run, "export")
    sections["source"] = {
        "role": role,
        "content": upstream(run, "apply", artifacts.PRUNED) if role == "pruned"
        else upstream(run, "recover", artifacts.RECOVERED_MODEL),
        "card": upstream(run, "apply", ("pruned", "prunectl.json")),
    }
    sections["output"] = str(output) if output else None
    if (run.project.record("eval") or {}).get("status") == "done":
        run.project.verify_outputs("eval")  # the card quotes its results
    return sections, []


def export(run: RunContext, output: Path | None = None) -> StepResult:
    role = run.dist.decide(lambda: export_source(run))
    directory = output or run.project.path(*artifacts.EXPORT)
    if output is not None and output.exists() and any(output.iterdir()) and not run.force:
        raise UserError(f"{output} exists and is not empty; choose another --output or pass --force")

    if run.recipe.export.format == "gguf":
        return execute(run, "export", key, {"output": str(output)} if output else {},
                       lambda: export_gguf.body(run, role, directory, model_card))

    def body() -> StepOutcome:
        model, tokenizer = artifacts.project_model(run, role)
        dtype_name = run.recipe.export.dtype
        dtype = None if dtype_name == "auto" else resolve_dtype(dtype_name, run.device)
        if run.dist.is_main:  # under torchrun the other ranks hold the same model
            save_model(model, tokenizer, directory, dtype=dtype)
            write_text(directory / "README.md", model_card(run, role, directory))
        return StepOutcome([directory], {"source": role, "directory": str(directory)})

    return execute(run, "export", key, {"output": str(output)} if output else {}, body)
