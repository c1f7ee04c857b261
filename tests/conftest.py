"""Fixtures over the shared test helpers (``helpers.py``): a tokenizer, a saved tiny model, a
text file, a private GGUF cache for every test, and a finished project (``finished``, made once
per module) with a private copy of it for each test (``project``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TEXT, byte_tokenizer, invoke, manual_recipe, save_tiny


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


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A project through every step (manual removal, perplexity of dense and pruned, export),
    and the recipe it was made with."""
    root = tmp_path_factory.mktemp("finished")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}. " + TEXT for i in range(30)))
    recipe = manual_recipe(root / "recipe.yaml", save_tiny(root / "tiny", "llama"), text)
    project = root / "proj"
    result = invoke("run", "-p", project, "-r", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    return project, recipe


@pytest.fixture
def project(finished, tmp_path) -> Path:
    """A copy of the finished project that the test may damage."""
    copy = tmp_path / "proj"
    shutil.copytree(finished[0], copy)
    return copy
