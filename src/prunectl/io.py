"""Atomic file I/O for everything a step persists.

Every write goes to a temporary file in the target's directory, is fsynced and then renamed over
the target (``os.replace``), so a process killed at any moment leaves either the old file or the
new one, never half of one.  Progress logs are JSON lines appended with one fsync per line: a
SIGKILL loses at most the line being written, and readers ignore such a torn last line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from prunectl.errors import UserError, write_refused


class CorruptFileError(UserError, ValueError):
    """A file the project wrote cannot be parsed any more.

    Also a ``ValueError`` so callers that treat unreadable files as absent keep working.
    """


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; not every platform lets a directory be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside ``path``; once the block succeeds it is fsynced and renamed
    onto ``path``.  On error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open honours the umask (mkstemp would leave the final file private to its owner)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        honour_umask(tmp)  # the block may have replaced the file with a private one
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if write_refused(error) is not None:
            error.filename = str(path)  # a full disk names the file the user knows, not tmp
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` can only
    be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def honour_umask(path: Path | str) -> None:
    """Give ``path`` (and, for a directory, everything in it) the permissions the umask allows:
    some writers (safetensors, ``tempfile``) create files ``-rw-------`` whatever the umask is,
    and a rename keeps them so.  Execute bits are kept as they are."""
    allowed = ~_umask()
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        mode = item.stat().st_mode & 0o7777
        full = 0o777 if item.is_dir() else 0o666 | (mode & 0o111)
        wanted = full & allowed
        if mode != wanted:
            os.chmod(item, wanted)


def make_temp_dir(parent: Path | str, prefix: str) -> Path:
    """A new directory ``<prefix><random>`` in ``parent``, created with the user's umask
    (``tempfile.mkdtemp`` makes it ``drwx------``, and a rename would keep that)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def write_directory(directory: Path | str, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a fresh ``<dir>.tmp-*`` folder beside ``directory``, then put it in place
    of ``directory`` with one rename (the old one goes aside as ``<dir>.old-*`` meanwhile), so a
    kill never leaves half a directory where a whole one was.  Leftovers of a killed write are
    removed by :meth:`prunectl.project.state.Project._remove_orphans` (or the export's own cleanup)."""
    directory = Path(directory)
    target = make_temp_dir(directory.parent, f"{directory.name}.tmp-")
    try:
        fill(target)
        honour_umask(target)
    except BaseException as error:
        shutil.rmtree(target, ignore_errors=True)
        if write_refused(error) is not None and not getattr(error, "filename", None):
            error.filename = str(directory)  # a Rust writer's error names no file
        raise
    old = None
    if directory.exists():
        old = make_temp_dir(directory.parent, f"{directory.name}.old-")
        old.rmdir()
        directory.rename(old)
    target.rename(directory)
    _fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for values steps commonly put in summaries."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays/scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text as every prunectl file writes it (paths, tensors and numpy values allowed)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=_jsonable)


def write_json(path: Path | str, obj: Any) -> None:
    _write_bytes(path, (dumps(obj) + "\n").encode())


def read_json(path: Path | str) -> Any:
    """Parse a JSON file; a file that is not JSON is a :class:`CorruptFileError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path} is not valid JSON (line {error.lineno}: {error.msg}); "
            "move it away and re-run the step that writes it"
        ) from None
    except UnicodeDecodeError:
        raise CorruptFileError(
            f"{path} is not valid JSON (not UTF-8 text); move it away and re-run the step "
            "that writes it"
        ) from None


def write_text(path: Path | str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _standalone(tensor: Any, seen: set[int]) -> Any:
    """A contiguous CPU tensor that shares storage with no other entry (safetensors refuses
    views and aliases)."""
    tensor = tensor.detach().to("cpu")
    storage = tensor.untyped_storage()
    size = tensor.numel() * tensor.element_size()
    whole = tensor.storage_offset() == 0 and storage.nbytes() == size
    if not tensor.is_contiguous() or not whole or storage.data_ptr() in seen:
        tensor = tensor.contiguous().clone()
    if tensor.numel():
        seen.add(tensor.untyped_storage().data_ptr())
    return tensor


def save_tensors(
    path: Path | str, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Save a dict of tensors as safetensors, atomically (tensors are moved to the CPU)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    prepared = {name: _standalone(t, seen) for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=metadata)


def load_tensors(path: Path | str, device: str = "cpu") -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(path)
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as error:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({error}); "
            "move it away and re-run the step that writes it"
        ) from None


def _drop_torn_tail(handle: IO[bytes]) -> None:
    """Cut a final line that has no newline (a write killed midway) so the next append starts
    on a line of its own."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return
    handle.seek(end - 1)
    if handle.read(1) == b"\n":
        return
    position = end
    while position > 0:
        start = max(0, position - 65536)
        handle.seek(start)
        chunk = handle.read(position - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            handle.truncate(start + newline + 1)
            return
        position = start
    handle.truncate(0)


def append_jsonl(path: Path | str, obj: Any) -> None:
    """Append one JSON line and fsync it before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (dumps(obj, indent=None) + "\n").encode()
    with open(path, "ab+") as handle:
        _drop_torn_tail(handle)
        handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path | str) -> list[Any]:
    """All complete lines of a JSON-lines file.

    A final line without its newline was torn by a kill and is ignored; a bad line anywhere
    else is corruption and a :class:`CorruptFileError` naming the file and line.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the last element is b"" or a torn line
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptFileError(
                f"{path}: line {number} is not valid JSON ({error}); "
                "fix or remove that line, or move the file away to start afresh"
            ) from None
    return records


def snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    """The current bytes of small bookkeeping files (``None``: absent), to undo a failed command."""
    return {Path(p): Path(p).read_bytes() if Path(p).exists() else None for p in paths}


def restore(saved: dict[Path, bytes | None]) -> None:
    """Put files back as :func:`snapshot` found them, atomically, touching only those that differ."""
    for path, content in saved.items():
        current = path.read_bytes() if path.exists() else None
        if current == content:
            continue
        if content is None:
            path.unlink()
        else:
            _write_bytes(path, content)
