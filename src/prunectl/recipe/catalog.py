"""The recipes shipped inside the package, for users who installed the wheel and have no
repository: list them, print one, copy one out to edit (torchtune's ``tune ls`` / ``tune cp``).

``recipes/`` at the repository root is the source; ``src/prunectl/recipes`` links to it, so the
wheel carries the same files and a checkout reads them in place.  A copy is self-contained: a
recipe that ``extends:`` another is written with the chain merged in, since the base it names
stays behind in the package.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import yaml

from prunectl.errors import UserError


def directory() -> Path:
    """Where the shipped recipes and configs are."""
    return Path(str(resources.files("prunectl") / "recipes"))


def shipped() -> dict[str, Path]:
    """Recipe name (file stem) → file, for every shipped ``.yaml``."""
    return {p.stem: p for p in sorted(directory().glob("*.yaml"))}


def configs() -> dict[str, Path]:
    """File name → file, for every shipped JSON config (``recover.distributed`` options)."""
    return {p.name: p for p in sorted(directory().glob("*.json"))}


def describe(path: Path) -> str:
    """One line on what a file is: a recipe's first sentence (of its opening comment), or what a
    JSON config configures."""
    if path.suffix == ".json":
        kind = "deepspeed" if "zero_optimization" in json.loads(path.read_text()) else "fsdp"
        return f"recover.distributed.{kind} options: copy it beside your recipe and name it there"
    paragraph: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or (not text and paragraph):
            break
        if text:
            paragraph.append(text)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", " ".join(paragraph))[0]


def find(name: str) -> Path:
    """A shipped file by recipe name or file name (``llama2-7b-flap`` or ``ds-zero2.json``)."""
    folder = directory()
    for candidate in (folder / name, folder / f"{name}.yaml"):
        if candidate.is_file() and candidate.parent == folder:
            return candidate
    raise UserError(f"no shipped recipe named '{name}'; choose one of: "
                    f"{', '.join([*shipped(), *configs()])}")


def text(name: str) -> str:
    """A shipped file as ``recipes cp`` writes it: as shipped, or, for a recipe that extends
    another, its opening comment and the merged keys."""
    from prunectl.recipe.load import merged
    from prunectl.recipe.sections import Recipe

    source = find(name)
    own = source.read_text(encoding="utf-8")
    base = yaml.safe_load(own).get("extends") if source.suffix == ".yaml" else None
    if base is None:
        return own
    header = []
    for line in own.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    header.append(f"# Self-contained: {base} (which this recipe extends) is merged in.")
    data = merged(source)
    order = [*Recipe.model_fields, *data]  # sections in the schema's order, as a recipe reads
    body = yaml.safe_dump(dict(sorted(data.items(), key=lambda kv: order.index(kv[0]))),
                          sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def copy(name: str, destination: Path) -> Path:
    """Write a shipped file, self-contained, to ``destination`` (a file, or a directory to copy
    into) and return the new file; an existing file is never overwritten."""
    source = find(name)
    target = destination / source.name if destination.is_dir() else destination
    if target.exists():
        raise UserError(f"{target} already exists; remove it or copy to another path")
    if not target.parent.is_dir():
        raise UserError(f"directory {target.parent} does not exist; create it first")
    from prunectl.io import write_text

    write_text(target, text(name))
    return target
