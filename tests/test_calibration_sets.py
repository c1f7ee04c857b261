"""``bookcorpus`` (LLM-Pruner: distinct random rows long enough for a window) and ``pg19``
(ShortGPT: random books of the validation split), read from local copies laid out as the hub
repositories through the same ``datasets`` code path; ``calibration.style`` samples any local
copy the same way."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from helpers import byte_tokenizer, save_tiny
from typer.testing import CliRunner

from prunectl.cli import app
from prunectl.data import sources
from prunectl.data.tokens import calibration_tokens, encode
from prunectl.errors import UserError
from prunectl.io import load_tensors

BOOKS = {"validation": [f"Book {i}. " + "It was a dark and stormy night. " * (3 + i)
                        for i in range(5)],
         "test": ["A test book that calibration never reads. " * 5]}
# every 40-byte stretch names its row (r07w03 ...), so a window tells which row it came from
SENTENCES = [" ".join(f"r{i:02d}w{j:02d}" for j in range(2 if i % 2 else 8)) for i in range(12)]


def local_copy(monkeypatch, tmp_path, name, splits):
    """A directory laid out like the hub's parquet export, standing in for the repository."""
    import pandas as pd

    directory = tmp_path / name / "data"
    directory.mkdir(parents=True)
    for split, texts in splits.items():
        pd.DataFrame({"text": texts}).to_parquet(directory / f"{split}-00000-of-00001.parquet")
    local = dataclasses.replace(sources.NAMED[name], path=str(directory.parent), revision=None)
    monkeypatch.setitem(sources.NAMED, name, local)


def source_of(window, documents, tokenizer):
    """Which document a window was cut from (-1: none)."""
    for i, text in enumerate(documents):
        ids = encode(tokenizer, text)
        n = window.numel()
        if any(torch.equal(ids[s:s + n], window) for s in range(ids.numel() - n + 1)):
            return i
    return -1


def test_pg19_draws_windows_inside_validation_books(monkeypatch, tmp_path):
    local_copy(monkeypatch, tmp_path, "pg19", BOOKS)
    assert sources.load_texts("pg19") == BOOKS["validation"]
    tok = byte_tokenizer()
    windows = calibration_tokens(tok, "pg19", nsamples=6, seqlen=64, seed=3)
    assert windows.shape == (6, 64)
    assert all(source_of(w, BOOKS["validation"], tok) >= 0 for w in windows)
    assert torch.equal(windows, calibration_tokens(tok, "pg19", nsamples=6, seqlen=64, seed=3))


def test_bookcorpus_rows_are_distinct_and_long_enough(monkeypatch, tmp_path):
    local_copy(monkeypatch, tmp_path, "bookcorpus", {"train": SENTENCES})
    tok = byte_tokenizer()
    long_rows = [i for i, s in enumerate(SENTENCES) if len(encode(tok, s)) >= 40]
    assert len(long_rows) == 6  # the even rows: 8 words of 6 bytes; odd ones have 13 bytes
    windows = calibration_tokens(tok, "bookcorpus", nsamples=6, seqlen=40, seed=0)
    sources_ = [source_of(w, SENTENCES, tok) for w in windows]
    assert sorted(sources_) == long_rows  # every long row once, no short one
    with pytest.raises(UserError, match="6 distinct documents of seqlen=40 tokens, fewer than "
                                        "calibration.nsamples=7"):
        calibration_tokens(tok, "bookcorpus", nsamples=7, seqlen=40, seed=0)


def test_a_local_copy_samples_as_its_reference_through_the_cli(tmp_path):
    text = tmp_path / "books.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text), "nsamples": 6, "seqlen": 40,
                        "style": "distinct"},
        "method": {"name": "shortgpt"}, "target": {"blocks": 1}}))
    project = tmp_path / "proj"
    result = CliRunner().invoke(app, ["calibrate", "-p", str(project), "-r", str(recipe),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    windows = load_tensors(project / "calibration" / "tokens.safetensors")["input_ids"]
    tok = byte_tokenizer()
    assert sorted(source_of(w, SENTENCES, tok) for w in windows) == list(range(0, 12, 2))
    bad = CliRunner().invoke(app, ["calibrate", "-p", str(project), "--set",
                                   "calibration.style=books"])
    assert bad.exit_code == 2 and "calibration.style" in bad.output
