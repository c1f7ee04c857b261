"""Atomic writes, torn JSON lines, safetensors round trips and digests."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from prunectl.errors import UserError
from prunectl.io import (
    CorruptFileError,
    append_jsonl,
    atomic_path,
    load_tensors,
    read_json,
    read_jsonl,
    save_tensors,
    write_json,
    write_text,
)


def test_json_round_trip_creates_parents_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    obj = {"n": 1, "f": 0.5, "s": "ü", "l": [1, 2], "p": tmp_path, "t": torch.tensor([1.5, 2.0])}
    write_json(target, obj)
    assert read_json(target) == {**obj, "p": str(tmp_path), "t": [1.5, 2.0]}
    assert json.loads(target.read_text()) == read_json(target)
    assert os.listdir(target.parent) == ["x.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not private like a mkstemp file


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"old": True})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert read_json(target) == {"old": True}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"old": True}
    assert os.listdir(tmp_path) == ["x.json"]


def test_corrupt_json_names_the_file_and_is_a_user_and_value_error(tmp_path):
    target = tmp_path / "x.json"
    write_text(target, '{"a": 1,\n')
    with pytest.raises(CorruptFileError, match="x.json is not valid JSON") as info:
        read_json(target)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert target.read_text() == '{"a": 1,\n'


def test_tensors_round_trip_views_aliases_and_metadata(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "base": base,
        "transposed": base.t(),  # non-contiguous view
        "row": base[1],  # contiguous view of part of the storage
        "alias": base,  # the same tensor twice
        "ids": torch.tensor([[3, 1, 2]], dtype=torch.long),
        "bf16": torch.randn(3, dtype=torch.bfloat16),
    }
    target = tmp_path / "t" / "x.safetensors"
    save_tensors(target, tensors, metadata={"seed": "42"})
    loaded = load_tensors(target)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    from safetensors import safe_open

    with safe_open(str(target), "pt") as handle:
        assert handle.metadata() == {"seed": "42"}


def test_corrupt_and_missing_safetensors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match="bad.safetensors"):
        load_tensors(bad)
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "none.safetensors")


def test_jsonl_appends_and_torn_last_line(tmp_path):
    target = tmp_path / "p" / "progress.jsonl"
    append_jsonl(target, {"step": 1})
    append_jsonl(target, {"step": 2, "x": [1, 2]})
    assert target.read_text() == '{"step": 1}\n{"step": 2, "x": [1, 2]}\n'
    with open(target, "ab") as handle:  # a kill in the middle of the third line
        handle.write(b'{"step": 3, "x"')
    assert read_jsonl(target) == [{"step": 1}, {"step": 2, "x": [1, 2]}]
    append_jsonl(target, {"step": 3})  # the torn tail is replaced, not glued onto
    assert read_jsonl(target) == [{"step": 1}, {"step": 2, "x": [1, 2]}, {"step": 3}]
    assert target.read_text().count("\n") == 3


def test_jsonl_torn_only_line_and_empty_file(tmp_path):
    target = tmp_path / "p.jsonl"
    target.write_bytes(b'{"a"')
    assert read_jsonl(target) == []
    append_jsonl(target, {"a": 1})
    assert target.read_text() == '{"a": 1}\n'
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert read_jsonl(empty) == []


def test_jsonl_corrupt_middle_line_names_file_and_line(tmp_path):
    target = tmp_path / "p.jsonl"
    target.write_text('{"a": 1}\n{oops\n{"a": 3}\n')
    with pytest.raises(UserError, match=r"p\.jsonl: line 2 is not valid JSON"):
        read_jsonl(target)


def test_file_digest_of_files_and_directories(tmp_path):
    from prunectl.digest import digest as file_digest

    file = tmp_path / "f.bin"
    file.write_bytes(b"hello" * 100_000)
    assert file_digest(file) == hashlib.sha256(b"hello" * 100_000).hexdigest()
    directory = tmp_path / "d"
    (directory / "sub").mkdir(parents=True)
    (directory / "a.txt").write_text("a")
    (directory / "sub" / "b.txt").write_text("b")
    expected = hashlib.sha256()
    for rel, content in (("a.txt", b"a"), ("sub/b.txt", b"b")):
        expected.update(f"{rel}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    assert file_digest(directory) == expected.hexdigest()
    before = file_digest(directory)
    (directory / "sub" / "b.txt").write_text("B")
    assert file_digest(directory) != before
    (directory / "sub" / "b.txt").write_text("b")
    (directory / "sub" / "b.txt").rename(directory / "sub" / "c.txt")
    assert file_digest(directory) != before
