"""The recipe: one YAML file that says what to prune, how, and how to judge the result.

Loading follows four rules: ``extends: base.yaml`` (relative to the including file) is merged
first, recursively (mappings merge, lists and scalars replace; a ``method`` section naming another
method replaces the base's instead, since options of one method mean nothing to another); then
``--set key.path=value`` / ``~key.path`` overrides apply in order (torchtune's grammar, values
parsed as YAML); then every local path (:data:`PATH_KEYS`) becomes absolute, resolved against the
directory of the file that wrote it (the current directory for ``--set`` and flags), so a recipe
travels with its data and the pinned copy works from any directory; then the schema
(:mod:`prunectl.recipe.sections`) validates the result.  Every model forbids unknown keys, and every error becomes one
line naming the file, the dotted key, what was wrong and what is allowed
(:mod:`prunectl.recipe.errors`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prunectl.errors import UserError
from prunectl.recipe.errors import describe_validation_error
from prunectl.recipe.sections import Recipe
from prunectl.recipe.yaml_unique import load_unique

PINNED_LABEL = "the project's pinned recipe.yaml"

Origins = dict[tuple[str, ...], str]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist; `prunectl recipes ls` lists the "
                        "shipped recipes, `prunectl recipes cp NAME .` copies one")
    try:
        data = load_unique(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is not a recipe (not UTF-8 text); pass the recipe's YAML file"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, method:, ...), "
                        f"got {type(data).__name__}")
    return data


def _leaves(data: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    if isinstance(data, dict) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix]


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in ``top`` replaces what ``base`` had."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _names_other_method(base: dict[str, Any], own: dict[str, Any]) -> bool:
    mine, theirs = own.get("method"), base.get("method")
    return (isinstance(mine, dict) and isinstance(theirs, dict) and "name" in mine
            and mine["name"] != theirs.get("name"))


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The file merged over everything it extends, and which file set each key."""
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(str(p) for p in (*chain, real))
        raise UserError(f"{chain[0]}: 'extends' forms a cycle ({cycle}); remove one of them")
    own = _read_yaml(path)
    base_name = own.pop("extends", None)
    data, origins = own, {}
    if base_name is not None:
        if not isinstance(base_name, str) or not base_name:
            raise UserError(f"{path}: extends: got {base_name!r}, expected a recipe file name")
        base_path = Path(base_name) if Path(base_name).is_absolute() else path.parent / base_name
        if not base_path.is_file():
            raise UserError(f"{path}: extends: recipe file {base_path} does not exist")
        base, origins = _resolve(base_path, (*chain, real))
        if _names_other_method(base, own):  # options of one method mean nothing to another
            base.pop("method")
            origins = {k: v for k, v in origins.items() if k[0] != "method"}
        data = _merge(base, own)
    origins.update({leaf: str(path) for leaf in _leaves(own, ())})
    return data, origins


def merged(path: Path) -> dict[str, Any]:
    """A recipe file's own keys with everything it ``extends`` merged in (no overrides, no
    defaults, paths as written): what a self-contained copy holds."""
    return _resolve(Path(path))[0]


#: recipe keys that may name a local file or directory (a list: each entry)
PATH_KEYS = (("model", "path"), ("model", "config"), ("calibration", "dataset"),
             ("recover", "dataset"), ("eval", "perplexity", "datasets"), ("eval", "task_paths"))
#: keys whose value is always local (never a hub id nor a dataset name)
_ALWAYS_LOCAL = {("model", "config"), ("eval", "task_paths")}
_LOCAL_SUFFIXES = {".gguf", ".txt", ".json", ".jsonl", ".parquet", ".yaml", ".yml", ".safetensors"}
_EXPLICIT = ("/", "~", "./", "../", ".\\", "..\\")


def _anchor(origin: str) -> tuple[Path, str]:
    """The directory a path from ``origin`` is relative to, and how to say so."""
    if origin and not origin.startswith("--set") and Path(origin).is_file():
        return Path(origin).resolve().parent, f"the directory of {origin}"
    return Path.cwd(), "the current directory"


def _local_path(key: tuple[str, ...], value: Any, origin: str, label: str) -> Any:
    """``value`` as an absolute path when it names a local file or directory; a hub id or a
    dataset name stays as it is; a local-looking path that does not exist is an error."""
    from prunectl.data.sources import BUILTIN, NAMED
    from prunectl.hub import looks_like_hub_id

    if not isinstance(value, str) or not value or value in NAMED or value == BUILTIN:
        return value
    base, relative_to = _anchor(origin)
    path = Path(value).expanduser()
    full = (path if path.is_absolute() else base / path).resolve()
    if full.exists():
        return str(full)
    local = (key in _ALWAYS_LOCAL or value.startswith(_EXPLICIT)
             or path.suffix.lower() in _LOCAL_SUFFIXES)
    if not local and (looks_like_hub_id(value) or "/" not in value):
        return value  # a hub id (org/name, or a bare name such as gpt2) or a dataset name
    raise UserError(f"{label}: {'.'.join(key)}: {value} does not exist (looked for {full}, "
                    f"relative to {relative_to}); a recipe file's paths are relative to its "
                    "directory, --set paths to the current directory")


def _resolve_paths(data: dict[str, Any], origins: Origins, label: str) -> None:
    """Make every local path the recipe file or an override names absolute, in place; keys
    without an origin come from a pinned recipe, whose paths were resolved when it was pinned."""
    for key in PATH_KEYS:
        parent: Any = data
        for part in key[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        origin = origins.get(key)
        if not isinstance(parent, dict) or key[-1] not in parent or origin is None:
            continue
        value = parent[key[-1]]
        parent[key[-1]] = ([_local_path(key, v, origin, label) for v in value]
                           if isinstance(value, list) else _local_path(key, value, origin, label))


def _parse_value(override: str, text: str) -> Any:
    try:
        return load_unique(text, f"--set {override}")
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise UserError(f"--set {override}: the value is not valid YAML ({problem}); "
                        "quote it or write a YAML scalar, list [a, b] or mapping {k: v}") from None


def apply_override(data: dict[str, Any], override: str, origins: Origins | None = None) -> None:
    """Apply one ``key.path=value`` or ``~key.path`` override in place."""
    delete = override.startswith("~")
    key, sep, value_text = override[1:].partition("=") if delete else override.partition("=")
    parts = key.strip().split(".")
    if (delete and sep) or (not delete and not sep) or not all(parts):
        raise UserError(f"--set {override}: expected key.path=value, or ~key.path to delete a key")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            if delete:
                return
            child = node[part] = {}
        if not isinstance(child, dict):
            if delete:
                return
            where = ".".join(parts[: i + 1])
            raise UserError(f"--set {override}: {where} is {child!r}, not a section with keys")
        node = child
    path = tuple(parts)
    if origins is not None:
        for leaf in [k for k in origins if k[: len(path)] == path]:
            del origins[leaf]
    if delete:
        node.pop(parts[-1], None)
        return
    value = _parse_value(override, value_text.strip())
    node[parts[-1]] = value
    if origins is not None:
        origins.update({leaf: f"--set {override}" for leaf in _leaves(value, path)})


def load_recipe(
    path: Path | str | None,
    overrides: list[str] | tuple[str, ...] = (),
    pinned: dict[str, Any] | None = None,
    light: bool = False,
) -> tuple[Recipe, dict[str, Any]]:
    """Read, merge, override and validate a recipe; returns it and its resolved plain dict.

    With no ``path``, start from ``pinned`` (the project's pinned recipe).  The resolved dict
    has every default filled in, so pinning it records exactly what ran.  ``light`` checks the
    method section's name only, so that a recipe is refused before torch is imported (a method's
    own options live in its module): commands call it first, the full load after.
    """
    if path is not None:
        label = str(path)
        data, origins = _resolve(Path(path))
    elif pinned is not None:
        label = PINNED_LABEL
        data, origins = copy.deepcopy(pinned), {}
    else:
        raise UserError("no recipe given; pass one with -r/--recipe "
                        "(`prunectl recipes ls` lists the shipped ones)")
    for override in overrides:
        apply_override(data, override, origins)
    if "extends" in data:
        raise UserError(f"{label}: extends: only a recipe file may extend another; "
                        "use --set key.path=value to change keys")
    _resolve_paths(data, origins, label)
    try:
        recipe = Recipe.model_validate(data, context={"origins": origins, "light": light})
    except ValidationError as error:
        # light: no method section to describe (its schema would import the method's module)
        described = {k: v for k, v in data.items() if k != "method"} if light else data
        raise UserError(describe_validation_error(error, Recipe, described, label, origins)) from None
    except UserError as error:  # an unknown method name, from the registry
        source = origins.get(("method", "name"), label)
        suffix = f" (from {source})" if source != label else ""
        raise UserError(f"{label}: method.name: {error}{suffix}") from None
    return recipe, recipe.to_dict()
