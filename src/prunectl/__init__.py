"""prunectl: structured pruning of large language models from one command line.

The Python API (:mod:`prunectl.api`): ``prunectl.Project(path).run(recipe, overrides=[...])``,
``.status()``, ``prunectl.load(path) -> (model, tokenizer)``.  Imported on first use, so
``import prunectl`` stays light (no torch, no transformers).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Project", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Project", "load"):
        from prunectl import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunectl' has no attribute {name!r}")
