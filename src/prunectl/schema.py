"""The base of every recipe section and method config: unknown keys are errors, and a boolean
is not a number (pydantic takes YAML's ``true`` as 1 where a count is due, so
``target.blocks: true`` would silently remove one block)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: a random seed: numpy (under transformers' ``set_seed``) takes 0 .. 2**32 - 1, torch no more
Seed = typing.Annotated[int, Field(ge=0, lt=2**32)]


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (``bool``, ``Any``, a union or literal with one)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_bool(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return any(isinstance(v, bool) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    return False


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields and \
                not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"got {str(value).lower()}, expected a number, not a boolean "
                             "(write the count itself, e.g. 2)")
        return value
