"""``export``: the shareable model directory, in the chosen dtype, with its model card."""

from __future__ import annotations

import json
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


#: The hub's base_model_relation values are adapter, merge, quantized and finetune.  A pruned model
#: is the base model's weights with whole heads, channels or blocks cut (and maybe retrained):
#: its weights changed, it is no adapter nor a merge of models, and "quantized" would claim the
#: same weights at a lower precision; "finetune" is the honest one of the four.
BASE_MODEL_RELATION = "finetune"
#: the first line of a non-uniform export's config.json (sorted keys put "_" before letters)
REMOTE_CODE_KEY = "_load_with"
REMOTE_CODE_NOTE = ("AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True): layers "
                    "differ in shape, modeling_prunectl.py in this folder builds them")


def card_metadata(run: RunContext, base: str | None, remote_code: bool) -> dict:
    """The card's YAML front matter, as ``huggingface_hub.ModelCard`` reads it."""
    gguf = run.recipe.export.format == "gguf"
    tags = ["pruned", "structured-pruning", "prunectl", run.recipe.method.name]
    if remote_code:
        tags.append("custom_code")
    if gguf:
        tags.append("gguf")
    data: dict = {"library_name": "gguf" if gguf else "transformers",
                  "pipeline_tag": "text-generation", "tags": tags}
    license_ = hub.source_license(run.recipe.model)
    if license_:
        data["license"] = license_
    if base:
        data["base_model"] = base
        data["base_model_relation"] = BASE_MODEL_RELATION
    return data


def model_card(run: RunContext, role: str, directory: Path) -> str:
    """README.md of the exported model: what was removed, how, and what it measured."""
    info = read_json(run.project.path("pruned", "prunectl.json"))
    base = hub.base_model(run.recipe.model, run.recipe.export)
    name = Path(run.recipe.model.path).name
    if base is None:  # a hint, not a warning: the card is valid without it (-q hides it)
        run.ui.info(f"export: no hub id for the card's base_model; set export.base_model to the "
                    f"hub id {name} came from (--set export.base_model=ORG/NAME)")
    remote_code = (directory / "modeling_prunectl.py").exists()
    front = yaml.safe_dump(card_metadata(run, base, remote_code), sort_keys=False).strip()
    lines = ["---", front, "---", "", f"# Pruned {name} ({run.recipe.method.name})", ""]
    if remote_code:  # the first thing a reader sees: without the flag nothing loads
        lines += [
            "> **Load with `trust_remote_code=True`.** Layers differ in shape, so this model ships",
            "> its modeling code (`modeling_prunectl.py`); the tokenizer reads the same config:",
            "",
            "```python",
            "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
            "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
            "```",
            "",
        ]
    lines += [
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
    recipe = yaml.safe_dump(hub.portable(run.recipe.to_dict()), sort_keys=False).strip()
    lines += ["## Recipe", "", "```yaml", recipe, "```", ""]
    return "\n".join(lines)


def _lead_config_with_loading_note(path: Path) -> None:
    """Put the trust_remote_code requirement on config.json's first line (the key sorts first,
    and transformers keeps an unknown key as a plain attribute)."""
    config = json.loads(path.read_text())
    config.pop(REMOTE_CODE_KEY, None)
    write_text(path, json.dumps({REMOTE_CODE_KEY: REMOTE_CODE_NOTE, **config}, indent=2) + "\n")


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
            if (directory / "modeling_prunectl.py").exists():
                _lead_config_with_loading_note(directory / "config.json")
            write_text(directory / "README.md", model_card(run, role, directory))
        return StepOutcome([directory], {"source": role, "directory": str(directory)})

    return execute(run, "export", key, {"output": str(output)} if output else {}, body)
