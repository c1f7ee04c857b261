"""The de-quantized GGUF cache: a second load comes from the cache and equals the first; a
changed file, a damaged copy or ``PRUNECTL_GGUF_CACHE=0`` never gives a stale model."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from helpers import byte_tokenizer, tiny_model
from prunectl.modeling import gguf_cache, loading
from prunectl.modeling.loading import load_config, load_model
from test_modeling_loading import write_tiny_gguf

CPU = torch.device("cpu")
TEXT = "Pruning, 2 ways."


def cfg(path):
    return SimpleNamespace(path=str(path), gguf_file=None, revision=None, trust_remote_code=False)


@pytest.fixture
def gguf_file(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"), byte_tokenizer())


def gguf_reads(monkeypatch) -> list[str]:
    """Record every time transformers is asked to read the GGUF file itself."""
    from transformers import AutoModelForCausalLM

    reads: list[str] = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, source, *args, **kwargs):
        if kwargs.get("gguf_file"):
            reads.append(str(source))
        return original(cls, source, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    return reads


def test_second_load_comes_from_the_cache_and_equals_the_first(gguf_file, monkeypatch, gguf_cache_dir):
    reads = gguf_reads(monkeypatch)
    first, first_tokenizer = load_model(cfg(gguf_file), CPU, torch.float32)
    copy = gguf_cache.find(gguf_file, torch.float32)
    assert copy is not None and copy.is_relative_to(gguf_cache_dir)
    loading._gguf_config.cache_clear()  # a new process: nothing remembered in memory
    second, second_tokenizer = load_model(cfg(gguf_file), CPU, torch.float32)
    assert len(reads) == 1  # the second load never touched the GGUF file
    ids = torch.randint(4, 260, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(second(ids).logits, first(ids).logits, rtol=0, atol=0)
    assert second_tokenizer(TEXT).input_ids == first_tokenizer(TEXT).input_ids
    assert second_tokenizer.pad_token == first_tokenizer.pad_token
    assert load_config(cfg(gguf_file)).to_dict()["num_hidden_layers"] == first.config.num_hidden_layers


def test_each_dtype_has_its_own_copy(gguf_file):
    load_model(cfg(gguf_file), CPU, torch.float32)
    assert gguf_cache.find(gguf_file, torch.bfloat16) is None
    model, _ = load_model(cfg(gguf_file), CPU, torch.bfloat16)
    assert model.dtype == torch.bfloat16 and gguf_cache.find(gguf_file, torch.bfloat16) is not None


def test_a_changed_file_misses(gguf_file, monkeypatch):
    reads = gguf_reads(monkeypatch)
    load_model(cfg(gguf_file), CPU, torch.float32)
    write_tiny_gguf(gguf_file, tiny_model("llama", seed=1), byte_tokenizer())
    stat = gguf_file.stat()
    os.utime(gguf_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed, _ = load_model(cfg(gguf_file), CPU, torch.float32)
    assert len(reads) == 2
    reference = tiny_model("llama", seed=1)
    ids = torch.randint(4, 260, (1, 7))
    with torch.inference_mode():
        torch.testing.assert_close(changed(ids).logits, reference(ids).logits)


def test_a_damaged_copy_is_discarded_and_rebuilt(gguf_file, monkeypatch):
    reads = gguf_reads(monkeypatch)
    first, _ = load_model(cfg(gguf_file), CPU, torch.float32)
    copy = gguf_cache.find(gguf_file, torch.float32)
    (copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="could not be read"):
        again, _ = load_model(cfg(gguf_file), CPU, torch.float32)
    assert len(reads) == 2 and gguf_cache.find(gguf_file, torch.float32) is not None
    ids = torch.randint(4, 260, (1, 7))
    with torch.inference_mode():
        torch.testing.assert_close(again(ids).logits, first(ids).logits)


def test_switched_off_it_writes_nothing(gguf_file, monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNECTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNECTL_GGUF_CACHE", "0")
    load_model(cfg(gguf_file), CPU, torch.float32)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_warns_and_the_load_still_succeeds(gguf_file, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PRUNECTL_CACHE_DIR", str(blocker))  # a file where a directory should be
    with pytest.warns(UserWarning, match="could not cache"):
        model, _ = load_model(cfg(gguf_file), CPU, torch.float32)
    assert model.config.num_hidden_layers == 4
