"""Calibration windows and evaluation streams, checked by decoding them back to the source text."""

from __future__ import annotations

import json

import pytest
import torch

from prunectl.data import calibration_tokens, evaluation_tokens
from prunectl.errors import UserError


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids.tolist())


def test_evaluation_tokens_are_the_rows_joined_by_blank_lines(tokenizer, tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("alpha beta\n\ngamma\ndelta epsilon\n")
    ids = evaluation_tokens(tokenizer, str(path))
    assert ids.dtype == torch.long and ids.dim() == 1
    assert _decode(tokenizer, ids) == "alpha beta\n\ngamma\n\ndelta epsilon"
    with_bos = evaluation_tokens(tokenizer, str(path), add_bos=True)
    assert with_bos[0].item() == tokenizer.bos_token_id and torch.equal(with_bos[1:], ids)


def test_add_bos_without_a_bos_token_is_a_user_error(tokenizer, text_file):
    tokenizer.bos_token = None
    with pytest.raises(UserError, match="has no BOS token; set eval.perplexity.add_bos to false"):
        evaluation_tokens(tokenizer, str(text_file), add_bos=True)


def test_stream_windows_are_seeded_slices_of_the_joined_text(tokenizer, text_file):
    windows = calibration_tokens(tokenizer, str(text_file), None, nsamples=6, seqlen=40, seed=3)
    assert windows.shape == (6, 40) and windows.dtype == torch.long
    joined = "\n\n".join(line for line in text_file.read_text().splitlines() if line.strip())
    for row in windows:
        assert _decode(tokenizer, row) in joined
    assert torch.equal(windows, calibration_tokens(tokenizer, str(text_file), None, 6, 40, 3))
    assert not torch.equal(windows, calibration_tokens(tokenizer, str(text_file), None, 6, 40, 4))


def test_document_windows_come_from_one_long_enough_document(tokenizer, tmp_path):
    docs = [f"short {i}" for i in range(20)]
    docs += [f"long document {i}: " + "word " * 30 for i in range(3)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    windows = calibration_tokens(tokenizer, str(path), None, 8, 50, 0, style="documents")
    assert windows.shape == (8, 50)
    for row in windows:
        assert any(_decode(tokenizer, row) in doc for doc in docs[20:])
    longest = max(len(d) for d in docs)  # one byte token per character
    message = rf"no document of .*docs.jsonl has seqlen=500 tokens \(the longest has {longest}\)"
    with pytest.raises(UserError, match=message):
        calibration_tokens(tokenizer, str(path), None, 2, 500, 0, style="documents")


def _alpaca_like(tmp_path, rows: int, length: int):
    """Rows of equal byte length with distinct ids, so the window count is known in advance."""
    path = tmp_path / "rows.jsonl"
    texts = [f"row{i:04d}".ljust(length, "x") for i in range(rows)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, texts


def test_rows_style_joins_sampled_rows_and_cuts_whole_windows(tokenizer, tmp_path):
    path, texts = _alpaca_like(tmp_path, rows=50, length=30)
    windows = calibration_tokens(
        tokenizer, str(path), None, nsamples=10, seqlen=64, seed=5, style="rows"
    )
    total = 10 * 30 + 9 * 2  # ten rows and nine "\n\n" separators, one byte token each
    assert windows.shape == (total // 64, 64)
    text = _decode(tokenizer, windows.flatten())
    pieces = text.split("\n\n")
    assert all(p in texts for p in pieces[:-1]) and len(set(pieces[:-1])) == len(pieces) - 1
    assert any(t.startswith(pieces[-1]) for t in texts)
    same = calibration_tokens(tokenizer, str(path), None, 10, 64, 5, style="rows")
    assert torch.equal(windows, same)


def test_too_little_text_is_a_user_error_saying_how_much(tokenizer, tmp_path):
    path, _ = _alpaca_like(tmp_path, rows=5, length=10)
    too_many = r"nsamples=9 but .*rows.jsonl has 5 rows in this split; use at most 5"
    with pytest.raises(UserError, match=too_many):
        calibration_tokens(tokenizer, str(path), None, 9, 8, 0, style="rows")
    short_rows = r"the 2 sampled rows of .* give 22 tokens, fewer than one window of seqlen=64"
    with pytest.raises(UserError, match=short_rows):
        calibration_tokens(tokenizer, str(path), None, 2, 64, 0, style="rows")
    short_text = r"calibration text .*rows.jsonl has 58 tokens, fewer than seqlen=100"
    with pytest.raises(UserError, match=short_text):
        calibration_tokens(tokenizer, str(path), None, 2, 100, 0)
