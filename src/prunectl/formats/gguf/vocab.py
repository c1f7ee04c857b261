"""The tokenizer part of a GGUF file: tokens, merges, special tokens and chat template.

Pruning never changes the tokenizer, so when the dense model itself came from a GGUF file its
``tokenizer.*`` keys are copied verbatim: that is exactly what llama.cpp's converter wrote.
Otherwise the Hugging Face tokenizer is written the way ``convert_hf_to_gguf.py`` does for the
Llama/Qwen families: a byte-level BPE as ``gpt2`` (tokens from the vocabulary, padded to the model's
vocabulary with ``[PAD<i>]`` unused tokens; added tokens as control or user-defined), a
byte-fallback BPE as ``llama`` through ``gguf.LlamaHfVocab``, and merges, special token ids,
add-BOS/EOS flags and chat template through ``gguf.SpecialVocab``.

Deviation: the converter names the BPE pre-tokenizer (``tokenizer.ggml.pre``) by hashing the
tokenization of a test string against a table it generates from the hub; prunectl has no such
table and writes ``default`` (llama.cpp's GPT-2-like split), saying so in a warning.  Token ids fed
in directly are unaffected; text tokenized by llama.cpp may split differently from the original
tokenizer.  Tokenizers of other kinds (WordLevel, SentencePiece-only) are refused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gguf

from prunectl.errors import UserError

DEFAULT_PRE = "default"
#: llama.cpp's vocabulary loader looks these tokens up by text, and fails to load the file when one
#: is missing, whenever ``general.name`` contains one of PHI3_NAMES (Phi-3's own special tokens)
PHI3_NAMES = ("phi-3", "phi3")
PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def copy_vocab(writer: gguf.GGUFWriter, source: Path) -> None:
    """Copy every ``tokenizer.*`` key of the GGUF file ``source``, types included."""
    reader = gguf.GGUFReader(source)
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)


def _bpe_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types the way the converter's ``get_vocab_base`` lists them."""
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(reverse[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _tokenizer_kind(directory: Path) -> str:
    spec = json.loads((directory / "tokenizer.json").read_text()) if (directory / "tokenizer.json").exists() else {}
    model = spec.get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    if model.get("type") == "BPE" and (spec.get("decoder") or {}).get("type") == "ByteLevel":
        if not model.get("merges"):
            raise UserError("the BPE tokenizer has no merges, which llama.cpp requires; "
                            "export with --format hf instead")
        return "gpt2"
    raise UserError(
        f"the tokenizer ({model.get('type', 'no tokenizer.json')}) is not a BPE tokenizer llama.cpp "
        "reads; GGUF export needs a byte-level or byte-fallback BPE tokenizer, or a model loaded "
        "from a .gguf file; export with --format hf instead")


def check_vocab(tokenizer: Any) -> None:
    """Refuse a tokenizer this module cannot write, before any file is created."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        _tokenizer_kind(Path(tmp))


def check_name_and_vocab(name: str, tokenizer: Any) -> None:
    """Refuse a file name llama.cpp would read as Phi-3's when the vocabulary lacks Phi-3's
    special tokens: llama.cpp matches ``general.name`` and then cannot load the file at all."""
    if not any(key in name.lower() for key in PHI3_NAMES):
        return
    missing = [token for token in PHI3_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise UserError(f"llama.cpp treats a GGUF model named '{name}' as Phi-3 and cannot load it "
                        f"without the tokens {', '.join(missing)}; name the model without "
                        f"'phi3'/'phi-3' or export with --format hf instead")


def write_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> list[str]:
    """Write the Hugging Face ``tokenizer``; returns warnings for the user."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tokenizer.save_pretrained(directory)
        kind = _tokenizer_kind(directory)
        if kind == "llama":
            vocab = gguf.LlamaHfVocab(directory)
            tokens, scores, types = zip(*vocab.all_tokens())
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre(DEFAULT_PRE)
            writer.add_token_list(list(tokens))
            writer.add_token_scores(list(scores))
            writer.add_token_types(list(types))
            gguf.SpecialVocab(directory, load_merges=False, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
            return []
        tokens, types = _bpe_tokens(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(DEFAULT_PRE)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
    return [f"tokenizer.ggml.pre is '{DEFAULT_PRE}': llama.cpp may pre-split text differently "
            "from the original tokenizer (token ids given directly are unaffected)"]
