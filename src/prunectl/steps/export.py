"""``export``: the shareable model directory, in the chosen dtype, with its model card."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from prunectl import __version__, hub
from prunectl.context import RunContext
from prunectl.io import read_json, write_text
from prunectl.modeling.loading import resolve_dtype
from prunectl.formats.hf import write_model
from prunectl.steps import artifacts, export_gguf, export_target
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


def directories(base: Path, formats: list[str]) -> dict[str, Path]:
    """The first format in ``base``, each other beside it in ``<base>-<format>``."""
    return {fmt: base if i == 0 else base.with_name(f"{base.name}-{fmt}") for i, fmt in enumerate(formats)}


def one_off_directory(run: RunContext) -> Path:
    """Where ``export --format/--outtype/--set`` without ``-o`` writes: ``exports/<format>-<type>``
    in the project, never its own ``export/``."""
    config = run.recipe.export
    first = config.all_formats[0]
    kind = config.gguf_outtype()[0] if first == "gguf" else config.dtype
    return run.project.path("exports", f"{first}-{kind}")


def _prepare(run: RunContext, role: str, fmt: str) -> tuple[Callable[[Path], None], dict]:
    """Load the model and check it for ``fmt`` (nothing written yet); returns what fills a new
    export directory, card and plots included, and the summary."""
    if fmt == "gguf":
        return export_gguf.prepare(run, role, model_card)
    model, tokenizer = artifacts.project_model(run, role)
    dtype_name = run.recipe.export.dtype
    dtype = None if dtype_name == "auto" else resolve_dtype(dtype_name, run.device)

    def fill(target: Path) -> None:
        write_model(model, tokenizer, target, dtype)
        if (target / "modeling_prunectl.py").exists():
            _lead_config_with_loading_note(target / "config.json")
        write_text(target / "README.md", model_card(run, role, target))

    return fill, {"source": role}


def _write_all(run: RunContext, role: str, targets: dict[str, Path], fingerprint: str | None) -> dict:
    """Every format checked first, then each directory written whole (rank 0 only: under
    torchrun the other ranks hold the same model)."""
    prepared = {fmt: _prepare(run, role, fmt) for fmt in targets}
    summary: dict = {}
    for fmt, directory in targets.items():
        fill, part = prepared[fmt]
        if run.dist.is_main:
            export_target.write(directory, fill, fingerprint)
        suffix = "" if len(targets) == 1 else f"_{fmt}"
        summary.update({f"{k}{suffix}" if k != "source" else k: v for k, v in part.items()})
        summary[f"directory{suffix}"] = str(directory)
    return summary


def export(run: RunContext, output: Path | None = None, one_off: bool = False) -> StepResult:
    """The project's own export (``export/``, plus ``export-<format>/`` for more formats), a
    step like the others; or a one-off (``-o DIR``, or the recipe changed on the command line),
    which leaves the project's state, pinned recipe and ``export/`` as they are."""
    role = run.dist.decide(lambda: export_source(run))
    formats = run.recipe.export.all_formats
    if output is None and not one_off:
        targets = directories(run.project.path(*artifacts.EXPORT), formats)
        return execute(run, "export", key, {},
                       lambda: StepOutcome(list(targets.values()), _write_all(run, role, targets, None)))

    targets = directories(output or one_off_directory(run), formats)
    for directory in targets.values():
        if output is not None:
            export_target.check_placement(directory, run.project.root)
        export_target.clean_leftovers(directory)
        export_target.check_contents(directory, "-o" if output is not None else "one-off export")
    fingerprint = run.dist.decide(lambda: run.project.fingerprint("export", *key(run)))
    manifests = [export_target.read_manifest(d) for d in targets.values()]
    if not run.force and all(m and m.get("fingerprint") == fingerprint for m in manifests):
        run.ui.info("[dim]export: up to date, skipped (use --force to re-run)[/]")
        return StepResult("export", "up-to-date", {"directory": str(next(iter(targets.values())))})
    run.ui.info("[bold]export[/] (one-off: the project's export/ and recipe stay as they are) …")
    started = time.perf_counter()
    summary = _write_all(run, role, targets, fingerprint)
    seconds = time.perf_counter() - started
    run.ui.info(f"[green]export: done[/] in {seconds:.1f}s → {', '.join(map(str, targets.values()))}")
    return StepResult("export", "done", summary, seconds)
