"""The one freshness key: sha256 of files, folders, tensors and JSON-able settings.

Every fingerprint, cache key and progress key in prunectl is :func:`digest` of what it depends
on, so "the same inputs" means the same thing everywhere.  Files that are read back later
without a ``state.json`` record (the evaluation token cache, recovery checkpoints, the teacher's
top-k shards, evaluation results) carry their digests in a ``digests.json`` of their folder or
one above it (:func:`seal`, :func:`sealed_write`); :func:`check_sealed` refuses one that changed
since, and ``status`` lists them all (:func:`sealed_problems`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunectl.errors import UserError
from prunectl.io import CorruptFileError, read_json, write_json

#: the manifest :func:`seal` keeps in a folder: relative name -> size and sha256
MANIFEST = "digests.json"
#: files up to this size are always hashed when verified; larger ones when their size or
#: modification time changed, or when a long step (or ``status --verify``) asks for it
SMALL_FILE = 16 << 20


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _hash_part(part: Any) -> str:
    if isinstance(part, Path):
        if not part.is_dir():
            return _hash_file(part)
        sha = hashlib.sha256()  # a folder: its sorted relative paths and their contents
        for file in sorted(p for p in part.rglob("*") if p.is_file()):
            sha.update(f"{file.relative_to(part).as_posix()}\0{_hash_file(file)}\n".encode())
        return sha.hexdigest()
    if isinstance(part, bytes):
        return hashlib.sha256(part).hexdigest()
    if hasattr(part, "numpy") and hasattr(part, "shape"):  # a tensor: its bytes and shape
        import torch

        raw = part.detach().cpu().contiguous().flatten().view(torch.uint8)  # bf16 too
        sha = hashlib.sha256(raw.numpy().tobytes())
        sha.update(f"{part.dtype}|{tuple(part.shape)}".encode())
        return sha.hexdigest()
    canonical = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def digest(*parts: Any) -> str:
    """sha256 (hex) of ``parts``: a ``Path`` by content (a folder by its files' relative paths
    and contents), ``bytes`` as they are, a tensor by its bytes, dtype and shape, anything else
    as canonical JSON (sorted keys; other objects by ``str``).  Several parts: the digest of
    their digests in order."""
    if len(parts) == 1:
        return _hash_part(parts[0])
    return hashlib.sha256("\n".join(_hash_part(p) for p in parts).encode()).hexdigest()


def damaged(file: Path, size: int, recorded: int, fix: str) -> UserError:
    """The one refusal of a file that is not as prunectl wrote it."""
    return UserError(f"{file} is damaged (size {size} bytes, recorded {recorded}, content "
                     f"changed); {fix}")


def _entries(manifest: Path) -> dict[str, dict]:
    try:
        found = read_json(manifest)
    except (FileNotFoundError, CorruptFileError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def _manifest_of(file: Path, manifest: Path | None) -> Path:
    return Path(manifest) if manifest is not None else file.parent / MANIFEST


def _name(file: Path, manifest: Path) -> str:
    return file.relative_to(manifest.parent).as_posix()


def _update(manifest: Path, files: list[Path], add: bool) -> None:
    entries = _entries(manifest)
    for file in files:
        entries.pop(_name(file, manifest), None)
        if add:
            stat = file.stat()
            entries[_name(file, manifest)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                              "sha256": digest(file)}
    write_json(manifest, dict(sorted(entries.items())))


def seal(*files: Path, manifest: Path | None = None) -> None:
    """Record the size and digest of ``files`` in ``manifest`` (by default the ``digests.json``
    of their folder; entries are named relative to the manifest's folder)."""
    by_manifest: dict[Path, list[Path]] = {}
    for file in map(Path, files):
        by_manifest.setdefault(_manifest_of(file, manifest), []).append(file)
    for where, members in by_manifest.items():
        _update(where, members, add=True)


def sealed_write(file: Path, write: Callable[[], Any], manifest: Path | None = None) -> None:
    """``write()`` the file ``file``, sealed: its old entry is dropped first, so a process
    killed before the new seal leaves an unsealed file (made again), never a false refusal."""
    file = Path(file)
    where = _manifest_of(file, manifest)
    if _name(file, where) in _entries(where):
        _update(where, [file], add=False)
    write()
    seal(file, manifest=where)


def check_folder(directory: Path, fix: str) -> None:
    """Every file ``directory``'s manifest names is there and as sealed (a folder without a
    manifest, made before sealing, is taken as it is)."""
    for name in _entries(Path(directory) / MANIFEST):
        if not (Path(directory) / name).is_file():
            raise UserError(f"{Path(directory) / name} is missing; {fix}")
        check_sealed(Path(directory) / name, fix)


def sealed_problems(root: Path, full: bool = False) -> list[tuple[Path, str]]:
    """``(file, problem)`` for every sealed file under ``root`` that is not as sealed (for
    ``status``; a deleted one is no problem: caches are made again).  Large files whose size
    and modification time are as sealed are hashed only with ``full``."""
    found = []
    for manifest in sorted(Path(root).rglob(MANIFEST)):
        for name, seen in _entries(manifest).items():
            file = manifest.parent / name
            if not isinstance(seen, dict) or not file.is_file():
                continue
            stat = file.stat()
            if stat.st_size != seen.get("size"):
                found.append((file, f"size {stat.st_size} bytes, recorded {seen.get('size')}"))
            elif (full or stat.st_size <= SMALL_FILE or stat.st_mtime_ns != seen.get("mtime_ns")) \
                    and digest(file) != seen.get("sha256"):
                found.append((file, "content changed"))
    return found


def check_sealed(file: Path, fix: str, manifest: Path | None = None) -> bool:
    """Whether ``file`` is sealed and as sealed (False: it has no entry, e.g. written before its
    seal by a killed process); a sealed file that changed raises :func:`damaged` with ``fix``."""
    file = Path(file)
    where = _manifest_of(file, manifest)
    seen = _entries(where).get(_name(file, where))
    if not isinstance(seen, dict):
        return False
    size = file.stat().st_size
    if size != seen.get("size") or digest(file) != seen.get("sha256"):
        raise damaged(file, size, seen.get("size", 0), fix)
    return True
