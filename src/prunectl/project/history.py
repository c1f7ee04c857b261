"""A project never loses a finished result without being told to.

Before a finished step runs again (``--force``, a changed recipe, a step flag such as
``apply --blocks 8``), its files are kept in ``history/<step>-<fingerprint>/`` under the project,
at their project-relative paths, with the step's record (``record.json``: fingerprint, figures,
size and sha256 of every file).  They are hard links where the filesystem allows (no copy, no
disk used until the step replaces them: every prunectl write replaces a file, never edits it in
place) and copies otherwise, so the step still finds its journals and caches where they were.
``prunectl gc`` removes entries, only when asked.

A recipe given with ``-r`` whose model, method or target differs from what the project finished
is refused before anything is pinned: one line naming the steps it would redo and the way out.

Light on purpose: ``status`` lists entries without importing torch.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prunectl.errors import UserError
from prunectl.io import CorruptFileError, make_temp_dir, read_json, write_json
from prunectl.project.state import STEPS

HISTORY = "history"
RECORD = "record.json"
#: what names an experiment: a change here is another experiment, not a re-run of this one
#: (a method's own settings, dtypes and devices are tuning: re-runs keep the old result)
IDENTITY = {"model": ("path", "gguf_file", "revision"), "method": ("name",), "target": None}
#: the first step that reads each of them (every later step reads its result)
FIRST_READER = {"model": "calibrate", "method": "calibrate", "target": "search"}


def _identity(recipe: dict[str, Any], section: str) -> Any:
    value = recipe.get(section)
    keys = IDENTITY[section]
    if keys is None or not isinstance(value, dict):
        return value
    picked = {k: value.get(k) for k in keys}
    return picked["name"] if section == "method" else picked


def _differences(section: str, old: Any, new: Any) -> list[str]:
    """``target.blocks 2 -> 1``: each key that changed, for the refusal line."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [f"{section}.{k} {old.get(k)} -> {new.get(k)}"
                for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return [f"{section} {old} -> {new}"]


def check_recipe_change(project: Any, pinned: dict[str, Any] | None, resolved: dict[str, Any],
                        force: bool) -> None:
    """Refuse a ``-r`` recipe that would redo finished work of another experiment."""
    if pinned is None or force:
        return
    changed = {s: (_identity(pinned, s), _identity(resolved, s)) for s in IDENTITY}
    changed = {s: pair for s, pair in changed.items() if pair[0] != pair[1]}
    if not changed:
        return
    first = min(STEPS.index(FIRST_READER[s]) for s in changed)
    steps = project.state["steps"]
    redo = [s for s in STEPS[first:] if (steps.get(s) or {}).get("status") == "done"]
    if not redo:
        return
    what = ", ".join(d for s, (old, new) in changed.items() for d in _differences(s, old, new))
    raise UserError(
        f"{project.root} holds finished work of another experiment ({what}): this recipe would "
        f"redo {', '.join(redo)}; use a new -p for it, or --force to redo them (the finished "
        f"outputs are then kept in {project.path(HISTORY)})"
    )


def _recorded_files(project: Any, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The step's files as recorded (older records list outputs only: walk them)."""
    if record.get("files"):
        return record["files"]
    files = {}
    for output in record.get("outputs", []):
        path = project.root / output
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(project.root).as_posix()] = {"size": file.stat().st_size}
    return files


def set_aside(project: Any, step: str) -> Path | None:
    """Keep the finished result of ``step`` in ``history/`` before the step runs again;
    returns the new entry (``None``: nothing finished there, or kept already)."""
    record = project.record(step) or {}
    if record.get("status") != "done" or not record.get("fingerprint"):
        return None
    files = {rel: seen for rel, seen in _recorded_files(project, record).items()
             if (project.root / rel).is_file()}
    entry = project.path(HISTORY, f"{step}-{record['fingerprint'][:12]}")
    if not files or entry.exists():
        return None
    tmp = make_temp_dir(entry.parent, f"{entry.name}.tmp-")
    for relative in files:
        source, target = project.root / relative, tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if relative.endswith(".jsonl"):  # journals are appended in place: a copy
                raise OSError
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    write_json(tmp / RECORD, {"step": step, "fingerprint": record["fingerprint"],
                              "finished": record.get("finished"), "summary": record.get("summary"),
                              "outputs": record.get("outputs", []), "files": files,
                              "kept": datetime.now(timezone.utc).isoformat(timespec="microseconds")})
    tmp.rename(entry)
    return entry


def discard_if_unchanged(project: Any, entry: Path | None) -> None:
    """Drop an entry when the step was refused before replacing anything (every kept file is
    still the project's own): a refusal leaves the project as it was."""
    if entry is None:
        return
    for file in entry.rglob("*"):
        if not file.is_file() or file == entry / RECORD:
            continue
        original = project.root / file.relative_to(entry)
        same = original.is_file() and (os.path.samefile(file, original) or
                                       original.read_bytes() == file.read_bytes())
        if not same:
            return
    shutil.rmtree(entry)
    if not any(entry.parent.iterdir()):
        entry.parent.rmdir()


def announce(project: Any, entry: Path | None) -> None:
    """One line on stderr, ``-q`` or not: a replaced result is news the user must see."""
    if entry is None:
        return
    record = read_json(entry / RECORD)
    print(f"{record['step']}: its previous result ({', '.join(record['outputs'])}) is kept in {entry} "
          f"(`prunectl gc -p {project.root}` removes it)", file=sys.stderr)


def entries(project_root: Path) -> list[dict[str, Any]]:
    """The kept results, oldest first: entry path, step, fingerprint, finished, size."""
    found = []
    folder = Path(project_root) / HISTORY
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not entry.is_dir() or ".tmp-" in entry.name:
            continue
        try:
            record = read_json(entry / RECORD)
        except (OSError, CorruptFileError):
            record = {}
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        found.append({"entry": entry.relative_to(project_root).as_posix(),
                      "step": record.get("step", entry.name.rsplit("-", 1)[0]),
                      "fingerprint": record.get("fingerprint"), "finished": record.get("finished"),
                      "summary": record.get("summary") or {}, "size_bytes": size,
                      "kept": record.get("kept") or ""})
    return sorted(found, key=lambda e: (e["kept"], e["entry"]))


def remove(project_root: Path, keep_last: int | None = None,
           step: str | None = None) -> list[dict[str, Any]]:
    """Remove the kept results (with ``keep_last``, all but the newest N of each step; with
    ``step``, that step's only); returns those removed."""
    if keep_last is not None and keep_last < 0:
        raise UserError(f"--keep-last: got {keep_last}, expected 0 or more")
    by_step: dict[str, list[dict[str, Any]]] = {}
    for entry in entries(project_root):
        if step is None or entry["step"] == step:
            by_step.setdefault(entry["step"], []).append(entry)
    removed = []
    for kept in by_step.values():
        doomed = kept if not keep_last else kept[:-keep_last]
        for entry in doomed:
            shutil.rmtree(Path(project_root) / entry["entry"])
            removed.append(entry)
    return removed
