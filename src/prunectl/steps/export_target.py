"""Where an export goes, and the rule that keeps it from deleting anything prunectl did not write.

Every export directory carries a small manifest, ``.prunectl-export``: the files prunectl wrote
there (size and modification time).  An export replaces a directory only when it is such an
earlier export, unchanged and with nothing added; a folder that is, contains or sits inside a
project, or holds any other file, is refused, ``--force`` or not.  The new export is written
whole in ``DIR.tmp-*`` beside it and renamed once (``io.write_directory``); the ``DIR.tmp-*`` /
``DIR.old-*`` folders a killed export left are removed on the next export to ``DIR``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunectl.errors import UserError
from prunectl.io import CorruptFileError, read_json, write_directory, write_json

MANIFEST = ".prunectl-export"
MANIFEST_FORMAT = "prunectl-export"
#: the pinned recipe's first line, as ``Project.pin_recipe`` writes it
_PIN_HEADER = "# Resolved recipe pinned by prunectl"
_REFUSE = "prunectl never deletes what it did not write: choose a new or empty folder for -o"


def is_project(directory: Path) -> bool:
    """Whether ``directory`` holds a prunectl project (its state, lock or pinned recipe)."""
    if (directory / ".prunectl.lock").is_file():
        return True
    state = directory / "state.json"
    if state.is_file():
        try:
            return read_json(state).get("format") == "prunectl-state"
        except (CorruptFileError, AttributeError, OSError):
            return True  # a damaged project is still a project
    recipe = directory / "recipe.yaml"
    try:
        with open(recipe, encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(_PIN_HEADER)
    except OSError:
        return False


def _files(directory: Path) -> list[str]:
    """Every entry under ``directory`` that is not a directory, relative, sorted."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            found.append(Path(root, name).relative_to(directory).as_posix())
    return found


def _projects_within(directory: Path, depth: int = 3, budget: int = 2000) -> Path | None:
    """A project among the first ``budget`` folders up to ``depth`` levels down (only to word
    the refusal: ``-o /`` must not walk the whole disk)."""
    for root, dirs, _ in os.walk(directory):
        if is_project(Path(root)):
            return Path(root)
        budget -= 1
        if budget <= 0:
            return None
        if len(Path(root).relative_to(directory).parts) >= depth:
            dirs.clear()
        dirs.sort()
    return None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of an earlier export in ``directory``; ``None`` when there is none."""
    try:
        manifest = read_json(directory / MANIFEST)
    except (OSError, CorruptFileError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or \
            not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def _changed(directory: Path, manifest: dict[str, Any]) -> str | None:
    """The first file of ``directory`` that the manifest does not vouch for (added, or changed
    since prunectl wrote it), ``None`` when the directory is exactly the export it describes."""
    recorded = manifest["files"]
    for relative in _files(directory):
        if relative == MANIFEST:
            continue
        seen = recorded.get(relative)
        path = directory / relative
        if seen is None or path.is_symlink():
            return f"{relative} (not written by prunectl)"
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (seen.get("size"), seen.get("mtime_ns")):
            return f"{relative} (changed since prunectl wrote it)"
    return None


def check_placement(directory: Path, project_root: Path) -> None:
    """Refuse an ``-o`` directory that is or sits inside a project (one line, exit 2)."""
    where = directory.resolve()
    if where.exists() and not where.is_dir():
        raise UserError(f"-o {directory} is a file, not a folder; {_REFUSE}")
    if is_project(where):
        raise UserError(f"-o {directory} is a prunectl project; {_REFUSE}")
    for parent in where.parents:
        if is_project(parent):
            own = " (its own export is written without -o)" if parent == project_root.resolve() else ""
            raise UserError(f"-o {directory} is inside the prunectl project {parent}{own}; {_REFUSE}")


def check_contents(directory: Path, label: str) -> None:
    """Refuse a non-empty ``directory`` unless it is exactly an earlier export (one line)."""
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    manifest = read_manifest(directory)
    if manifest is None:
        inner = _projects_within(directory)
        first = sorted(p.name for p in directory.iterdir())[0]
        what = f"contains the prunectl project {inner}" if inner else \
            f"holds files prunectl did not write (e.g. {first})"
        raise UserError(f"{label} {directory} {what}; {_REFUSE}")
    changed = _changed(directory, manifest)
    if changed:
        raise UserError(f"{label} {directory} is an earlier export, but it holds {changed}; {_REFUSE}")


def clean_leftovers(directory: Path) -> None:
    """Remove the ``DIR.tmp-*`` / ``DIR.old-*`` folders a killed export to ``directory`` left
    (only those carrying prunectl's marker: a user's ``DIR.tmp-backup`` stays)."""
    pattern = re.compile(rf"{re.escape(directory.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    if not directory.parent.is_dir():
        return
    for sibling in directory.parent.iterdir():
        if pattern.fullmatch(sibling.name) and sibling.is_dir() and \
                (sibling / MANIFEST).is_file() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)


def write(directory: Path, fill: Callable[[Path], None], fingerprint: str) -> Path:
    """Write an export whole: marker first (so a killed write is known as ours), then ``fill``,
    then the manifest of what ``fill`` wrote, then one rename onto ``directory``."""

    def marked(target: Path) -> None:
        write_json(target / MANIFEST, {"format": MANIFEST_FORMAT, "complete": False, "files": {}})
        fill(target)
        files = {}
        for relative in _files(target):
            if relative != MANIFEST:
                stat = (target / relative).stat()
                files[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        write_json(target / MANIFEST, {"format": MANIFEST_FORMAT, "complete": True,
                                       "fingerprint": fingerprint, "files": files})

    return write_directory(directory, marked)
