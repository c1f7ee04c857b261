"""A de-quantized copy of each GGUF checkpoint, so that every CLI step after the first loads it
in seconds.

transformers parses a GGUF file's metadata, converts its vocabulary and de-quantizes its tensors
on every load (about 45 s for SmolLM2-135M on two CPU cores, much longer for bigger files), and
each prunectl step is its own process: the demo paid that once per step.  The first load stores
the model (in the dtype it was loaded in) and its tokenizer as a plain Hugging Face directory
under ``$PRUNECTL_CACHE_DIR/gguf/<key>/<dtype>`` (default ``~/.cache/prunectl``).  The key covers
the file's resolved path, size and modification time and the transformers version, so a changed
file or library is a miss, never a stale hit.  ``PRUNECTL_GGUF_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from prunectl.digest import digest

COMPLETE = "prunectl-cache-complete"


def enabled() -> bool:
    return os.environ.get("PRUNECTL_GGUF_CACHE", "1") != "0"


def root() -> Path:
    base = os.environ.get("PRUNECTL_CACHE_DIR") or Path.home() / ".cache" / "prunectl"
    return Path(base) / "gguf"


def _file_key(file: Path) -> str:
    import transformers

    stat = file.stat()  # not the content: hashing gigabytes would cost what the cache saves
    return digest({"file": str(file.resolve()), "size": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns, "transformers": transformers.__version__})[:20]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry(file: Path, dtype: torch.dtype) -> Path:
    """Where the de-quantized copy of ``file`` in ``dtype`` lives (present or not)."""
    return root() / _file_key(file) / _dtype_name(dtype)


def find(file: Path, dtype: torch.dtype | None = None) -> Path | None:
    """A complete copy of ``file`` (in ``dtype``, or in any dtype when None: enough for its
    config), or None."""
    if not enabled() or not file.is_file():
        return None
    if dtype is not None:
        candidates = [entry(file, dtype)]
    else:
        folder = root() / _file_key(file)
        candidates = sorted(folder.iterdir()) if folder.is_dir() else []
    return next((c for c in candidates if (c / COMPLETE).is_file()), None)


def store(model, tokenizer, file: Path, dtype: torch.dtype) -> Path | None:
    """Save a freshly de-quantized model and its tokenizer as the cache entry of ``file``.

    Written to a temporary sibling and renamed, so a killed save leaves no entry that looks
    complete.  A cache that cannot be written (disk full, read-only home) costs the next step a
    slow load, not this step its result: it is reported as a warning.
    """
    if not enabled():
        return None
    final = entry(file, dtype)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / COMPLETE).write_text(f"{file}\n")
        if final.exists():  # another process stored it first
            shutil.rmtree(partial)
        else:
            partial.rename(final)
        return final
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        warnings.warn(f"could not cache the de-quantized {file.name} under {root()} ({error}); "
                      "the next step will de-quantize it again", stacklevel=2)
        return None


def discard(copy: Path) -> None:
    """Remove a cache entry that failed to load (a damaged file), so the next load rebuilds it."""
    warnings.warn(f"the cached copy {copy} could not be read; de-quantizing the GGUF file again",
                  stacklevel=2)
    shutil.rmtree(copy, ignore_errors=True)
