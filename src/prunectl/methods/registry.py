"""Method registry: names (and aliases) to lazily imported ``module:Class`` entries.

Lazy entries keep ``prunectl --help`` fast and let a method's heavy imports load only when it
runs.  A miss suggests the closest name.
"""

from __future__ import annotations

import difflib
import importlib

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig

METHODS: dict[str, str] = {
    "manual": "prunectl.methods.manual:ManualMethod",
    "block": "prunectl.methods.block:BlockMethod",
    "shortgpt": "prunectl.methods.shortgpt:ShortGPTMethod",
    "flap": "prunectl.methods.flap:FlapMethod",
    "wanda-sp": "prunectl.methods.flap:WandaSPMethod",
    "mag-sp": "prunectl.methods.flap:MagSPMethod",
    "magnitude": "prunectl.methods.magnitude:MagnitudeMethod",
    "taylor": "prunectl.methods.taylor:TaylorMethod",
    "reap": "prunectl.methods.reap:ReapMethod",
    "slimgpt": "prunectl.methods.slimgpt:SlimGPTMethod",
    "puzzle": "prunectl.methods.puzzle.method:PuzzleMethod",
}

ALIASES: dict[str, str] = {
    "blockpruner": "block",
    "llm-pruner": "taylor",
    "wanda_sp": "wanda-sp",
    "mag_sp": "mag-sp",
    "torch-pruning": "magnitude",
}


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; a miss suggests the closest."""
    key = ALIASES.get(name, name)
    if key in METHODS:
        return key
    close = difflib.get_close_matches(name, [*METHODS, *ALIASES], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown method '{name}'{hint}; known methods: {', '.join(METHODS)}")


def method_class(name: str) -> type[Method]:
    module_name, attr = METHODS[canonical_name(name)].split(":")
    return getattr(importlib.import_module(module_name), attr)


def parse_method_config(section: dict) -> MethodConfig:
    """Validate a recipe's ``method`` section against the named method's own schema."""
    if "name" not in section:
        raise UserError("method.name is missing; set it to one of: " + ", ".join(METHODS))
    cls = method_class(str(section["name"]))
    return cls.Config.model_validate({**section, "name": canonical_name(str(section["name"]))})


def create_method(config: MethodConfig) -> Method:
    return method_class(config.name)(config)
