"""The one freshness key: sha256 of files, folders, tensors and JSON-able settings.

Every fingerprint, cache key and progress key in prunectl is :func:`digest` of what it depends
on, so "the same inputs" means the same thing everywhere.  Files that are read back later
without a ``state.json`` record (the evaluation token cache, recovery checkpoints, the teacher's
top-k shards, evaluation results) carry their digests in a ``digests.json`` beside them
(:func:`seal`); :func:`check_sealed` refuses one that changed since.
"""

from __future__ import annotations

import hashlib
import json
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


def _manifest(directory: Path) -> dict[str, dict]:
    try:
        found = read_json(directory / MANIFEST)
    except (FileNotFoundError, CorruptFileError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def seal(*files: Path) -> None:
    """Record the size and digest of ``files`` in the ``digests.json`` of their folder."""
    by_folder: dict[Path, list[Path]] = {}
    for file in map(Path, files):
        by_folder.setdefault(file.parent, []).append(file)
    for folder, members in by_folder.items():
        manifest = _manifest(folder)
        for file in members:
            manifest[file.name] = {"size": file.stat().st_size, "sha256": digest(file)}
        write_json(folder / MANIFEST, dict(sorted(manifest.items())))


def seal_folder(directory: Path) -> None:
    """:func:`seal` every file directly in ``directory`` (a recovery checkpoint)."""
    seal(*(p for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST))


def check_folder(directory: Path, fix: str) -> None:
    """Every file ``directory``'s manifest names is there and as sealed (a folder without a
    manifest, made before sealing, is taken as it is)."""
    for name in _manifest(Path(directory)):
        if not (Path(directory) / name).is_file():
            raise UserError(f"{Path(directory) / name} is missing; {fix}")
        check_sealed(Path(directory) / name, fix)


def check_sealed(file: Path, fix: str) -> bool:
    """Whether ``file`` is sealed and as sealed (False: it has no entry, e.g. written before its
    seal by a killed process); a sealed file that changed raises :func:`damaged` with ``fix``."""
    file = Path(file)
    seen = _manifest(file.parent).get(file.name)
    if not isinstance(seen, dict):
        return False
    size = file.stat().st_size
    if size != seen.get("size") or digest(file) != seen.get("sha256"):
        raise damaged(file, size, seen.get("size", 0), fix)
    return True
