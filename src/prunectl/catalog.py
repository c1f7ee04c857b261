"""The recipes shipped inside the package, for users who installed the wheel and have no
repository: list them and copy one out to edit (torchtune's ``tune ls`` / ``tune cp``).

``recipes/`` at the repository root is the source; ``src/prunectl/recipes`` links to it, so the
wheel carries the same files and a checkout reads them in place.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from prunectl.errors import UserError


def _directory() -> Path:
    return Path(str(resources.files("prunectl") / "recipes"))


def shipped() -> dict[str, Path]:
    """Recipe name (file stem) → file, for every shipped ``.yaml``."""
    return {p.stem: p for p in sorted(_directory().glob("*.yaml"))}


def describe(path: Path) -> str:
    """A recipe's first comment line: what it reproduces."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.lstrip("# ").strip()
    return ""


def find(name: str) -> Path:
    """A shipped file by recipe name or file name (``llama2-7b-flap`` or ``ds-zero2.json``)."""
    directory = _directory()
    for candidate in (directory / name, directory / f"{name}.yaml"):
        if candidate.is_file() and candidate.parent == directory:
            return candidate
    raise UserError(f"no shipped recipe named '{name}'; choose one of: {', '.join(shipped())}")


def copy(name: str, destination: Path) -> Path:
    """Copy a shipped recipe to ``destination`` (a file, or a directory to copy into) and
    return the new file; an existing file is never overwritten."""
    source = find(name)
    target = destination / source.name if destination.is_dir() else destination
    if target.exists():
        raise UserError(f"{target} already exists; remove it or copy to another path")
    if not target.parent.is_dir():
        raise UserError(f"directory {target.parent} does not exist; create it first")
    shutil.copyfile(source, target)
    return target
