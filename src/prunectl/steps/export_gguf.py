"""``export`` with ``export.format: gguf``: one llama.cpp file plus its model card.

``steps/export.py`` calls ``prepare`` and writes the directory (the recipe has already refused
``outtype`` without ``gguf``; ``export.dtype`` maps to an outtype); what llama.cpp cannot run is
refused by ``formats.gguf.writer.check_gguf`` after the model is loaded and before any export
directory is touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from prunectl.context import RunContext
from prunectl.io import write_text
from prunectl.formats.gguf.writer import GgufResult, check_gguf, write_gguf
from prunectl.steps import artifacts

#: the llama-cpp-python source distribution whose vendored llama.cpp the opt-in test and the
#: benchmark ran (scripts/llama_cpp.sh builds the same one)
LLAMA_CPP_CHECKED = "llama.cpp vendored in llama-cpp-python 0.3.36"


def outtype(run: RunContext) -> str:
    return run.recipe.export.gguf_outtype()[0]


def vocab_source(run: RunContext) -> Path | None:
    """The GGUF file the dense model came from (its tokenizer keys are reused), if any."""
    cfg = run.recipe.model
    path = Path(cfg.path).expanduser()
    if str(cfg.path).endswith(".gguf"):
        return path
    if cfg.gguf_file and (path / cfg.gguf_file).is_file():
        return path / cfg.gguf_file
    return None


def base_name(run: RunContext) -> str:
    """The source model's name without a GGUF source's own type suffix (``.Q4_1``)."""
    base = Path(run.recipe.model.gguf_file or run.recipe.model.path).name.removesuffix(".gguf")
    return re.sub(r"[.-](f16|f32|bf16|q\d\w*)$", "", base, flags=re.IGNORECASE)


def file_name(run: RunContext) -> str:
    """``<model>-<method>-<outtype>.gguf``."""
    return f"{base_name(run)}-{run.recipe.method.name}-{outtype(run)}.gguf"


def card_section(result: GgufResult, kind: str) -> str:
    """The model card's GGUF part: the file, the llama.cpp it was checked with, how to run it."""
    name = result.path.name
    lines = [
        "## GGUF (llama.cpp)",
        "",
        f"File: `{name}` ({kind}, llama.cpp architecture `{result.arch}`).",
        f"Layout checked against {LLAMA_CPP_CHECKED} (logits and greedy tokens equal "
        "transformers' at f32; see prunectl's docs/notes/gguf.md).",
        "",
        "```sh",
        f"llama-cli -m {name}",
        "```",
        "",
    ]
    if result.arch == "deci":
        lines += ["Layers differ in shape, so the file uses llama.cpp's `deci` architecture "
                  "(per-layer head counts and feed-forward widths).", ""]
    if result.fallbacks:
        lines += [f"{len(result.fallbacks)} matrices have rows that the out type's blocks do not "
                  "divide and are stored in another type, as llama.cpp does:", ""]
        lines += [f"- `{name}`: {stored}" for name, stored in sorted(result.fallbacks.items())]
        lines.append("")
    return "\n".join(lines)


def prepare(run: RunContext, role: str, model_card: Callable[[RunContext, str, Path], str]
            ) -> tuple[Callable[[Path], None], dict]:
    """Load the project model and refuse what llama.cpp cannot run, before anything is written;
    returns what writes the GGUF file and its model card (``model_card`` from the Hugging Face
    export) into a new export directory, and the step's summary."""
    model, tokenizer = artifacts.project_model(run, role)
    kind, note = run.recipe.export.gguf_outtype()
    if note:
        run.ui.warn(f"export: {note}")
    name = file_name(run)
    check_gguf(model, tokenizer, kind, vocab_source(run), Path(name).stem)
    summary = {"source": role, "gguf": name}

    def fill(target: Path) -> None:
        result = write_gguf(model, tokenizer, target / name, kind,
                            name=Path(name).stem, vocab_source=vocab_source(run))
        for warning in result.warnings:
            run.ui.warn(warning)
        summary["arch"] = result.arch
        write_text(target / "README.md", model_card(run, role, target) + "\n" + card_section(result, role))

    return fill, summary
