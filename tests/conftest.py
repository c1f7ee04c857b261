"""Fixtures over the shared test helpers (``helpers.py``): a tokenizer, a saved tiny model, a
text file, and a private GGUF cache for every test."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TEXT, byte_tokenizer, save_tiny


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    return save_tiny(tmp_path / "tiny-llama")


@pytest.fixture
def text_file(tmp_path) -> Path:
    """About 20k characters of plain text, paragraphs separated by blank lines."""
    path = tmp_path / "text.txt"
    paragraphs = [f"Paragraph {i}. " + TEXT * (1 + i % 3) for i in range(60)]
    path.write_text("\n\n".join(paragraphs))
    return path


@pytest.fixture(autouse=True)
def gguf_cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """De-quantized GGUF copies go to this session's temporary directory, never to ~/.cache."""
    directory = tmp_path_factory.getbasetemp() / "gguf-cache"
    monkeypatch.setenv("PRUNECTL_CACHE_DIR", str(directory))
    return directory
