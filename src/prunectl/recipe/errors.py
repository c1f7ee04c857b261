"""Pydantic validation errors as one line a user can act on.

``recipe.yaml: method.block_type: got 'foo', expected one of mha, mlp, mix, layer``: the file,
the dotted key, what was wrong and what is allowed.  "Allowed" is read from the schema itself
(the field's type and constraints), so the message stays right when a field changes; errors
pydantic reports once per member of a union are folded into one.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ValidationError

from prunectl.errors import UserError
from prunectl.methods.registry import method_class

HINTS = {
    "model": "add a model section, e.g. model: {path: <hub id, directory or .gguf file>}",
    "model.path": "set model.path to a hub id, a local directory or a .gguf file",
    "method": "add a method section, e.g. method: {name: manual, remove: [layers.3.mlp]}",
}
NOUNS = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}
BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The members of a union type, or None for anything else."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _optional_member(tp: Any) -> Any:
    """``X`` for ``X | None``; anything else unchanged."""
    members = _members(tp)
    if members is not None and len(members) == 2 and type(None) in members:
        return next(m for m in members if m is not type(None))
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _describe(tp: Any, bounds: str = "") -> str:
    """What a value of type ``tp`` must look like, in words."""
    members = _members(tp)
    if members is not None:
        words = [_describe(m, bounds) for m in members if m is not type(None)]
        return " or ".join(words + (["null"] if type(None) in members else []))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if len(args) == 1:
            return repr(args[0])
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        item = args[0] if args else Any
        if typing.get_origin(item) is Literal:
            return "a list of values among " + ", ".join(str(a) for a in typing.get_args(item))
        return "a list of " + NOUNS.get(item, "items")
    if origin is dict or tp is dict:
        return "a mapping"
    if _is_model(tp):
        return "a mapping with keys " + ", ".join(tp.model_fields)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp] + (bounds if tp in (int, float) else "")
    return "any value"


def _bounds(metadata: list[Any]) -> str:
    parts = [f"{symbol} {getattr(m, attr)}" for m in metadata
             for kind, attr, symbol in BOUNDS if isinstance(m, kind)]
    return (" " + " and ".join(parts)) if parts else ""


def _walk(loc: tuple[Any, ...], root: type[BaseModel], method_cls: type | None):
    """Follow ``loc`` through the schema: the key path the user wrote, and the type and
    constraints of the field it ends at (pydantic's union-member tags are dropped)."""
    current: Any = root
    annotation, bounds, path = root, "", []
    for element in loc:
        current = _optional_member(current)
        origin = typing.get_origin(current)
        if _is_model(current) and element in current.model_fields:
            info = current.model_fields[element]
            annotation = info.annotation
            if current is root and element == "method" and method_cls is not None:
                annotation = method_cls
            current, bounds = annotation, _bounds(info.metadata)
        elif isinstance(element, int) and origin is list:
            current = annotation = typing.get_args(current)[0]
            bounds = ""
        elif isinstance(element, str) and origin is dict:
            current = annotation = typing.get_args(current)[1]
            bounds = ""
        else:
            break
        path.append(element)
    return path, annotation, bounds


def _dotted(path: list[Any]) -> str:
    text = ""
    for element in path:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else element)
    return text or "(top level)"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _method_class(data: dict[str, Any]) -> type | None:
    section = data.get("method")
    if not isinstance(section, dict) or "name" not in section:
        return None
    try:
        return method_class(str(section["name"])).Config
    except UserError:
        return None


def _value_at(data: Any, path: list[Any], default: Any) -> Any:
    for element in path:
        try:
            data = data[element]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def _problem(errors: list[dict], path: list[Any], annotation: Any, bounds: str, root, method_cls,
             data: dict[str, Any]):
    """The words after the key: what was wrong and what is allowed."""
    first = errors[0]
    kind = first["type"]
    if kind == "extra_forbidden":
        _, parent_type, _ = _walk(tuple(first["loc"][:-1]), root, method_cls)
        parent_type = _optional_member(parent_type)
        allowed = list(parent_type.model_fields) if _is_model(parent_type) else []
        close = difflib.get_close_matches(str(first["loc"][-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return "missing; " + HINTS.get(_dotted(path), "expected " + _describe(annotation, bounds))
    for error in errors:
        if error["type"] in ("value_error", "assertion_error"):
            return error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = _value_at(data, path, first["input"])  # a union reports members, not the value
    return f"got {_show(value)}, expected {_describe(annotation, bounds)}"


def _source(path: list[Any], origins: dict[tuple[str, ...], str], label: str) -> str:
    """Where the offending key came from when that is not the recipe file itself."""
    keys = tuple(str(p) for p in path)
    for end in range(len(keys), 0, -1):
        if keys[:end] in origins:
            sources = {origins[keys[:end]]}
            break
    else:
        sources = {v for k, v in origins.items() if k[: len(keys)] == keys}
    sources.discard(label)
    return f" (from {', '.join(sorted(sources))})" if sources else ""


def describe_validation_error(
    error: ValidationError,
    root: type[BaseModel],
    data: dict[str, Any],
    label: str,
    origins: dict[tuple[str, ...], str],
) -> str:
    """One line: ``FILE: key.path: problem`` plus where the key came from and how many more.
    ``root`` is the schema ``data`` failed (``Recipe``), passed in so that this module does not
    import ``recipe`` back."""
    method_cls = _method_class(data)
    groups: dict[tuple, list[dict]] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            parent, _, _ = _walk(loc[:-1], root, method_cls)
            key = (*parent, loc[-1])
        else:
            key = tuple(_walk(loc, root, method_cls)[0])
        groups.setdefault(key, []).append(item)
    path_key, errors = next(iter(groups.items()))
    path = list(path_key)
    _, annotation, bounds = _walk(path_key, root, method_cls)
    problem = _problem(errors, path, annotation, bounds, root, method_cls, data)
    more = f" (+{len(groups) - 1} more)" if len(groups) > 1 else ""
    return f"{label}: {_dotted(path)}: {problem}{_source(path, origins, label)}{more}"
