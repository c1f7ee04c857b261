"""Token ids for calibration and evaluation, drawn the way the reference projects draw them.

Calibration follows one of three conventions, chosen per dataset (``calibration_style``):

- ``stream`` (GPTQ/SparseGPT, LLM-Pruner and FLAP for WikiText-2 and PTB): the split's rows
  joined with ``"\\n\\n"`` and tokenized once; each sample is a window of ``seqlen`` tokens at a
  uniformly random offset (windows may overlap, as in the references).
- ``documents`` (the same projects for C4, ShortGPT for PG-19): each sample draws a random
  document, redraws until one has at least ``seqlen`` tokens, and takes a window at a random
  offset inside it.
- ``distinct`` (LLM-Pruner's bookcorpus samples): ``documents``, but no document twice.
- ``rows`` (BlockPruner's alpaca calibration): ``nsamples`` distinct rows drawn without
  replacement, joined with ``"\\n\\n"``, tokenized once with the tokenizer's own special tokens,
  and cut into consecutive ``seqlen``-token windows (tail dropped).  ``nsamples`` therefore counts
  text rows, not windows: 64 alpaca rows of ~150 tokens give 4 windows of 2048.

Deviations: the references tokenize with the tokenizer's special tokens (a BOS at the start of
the stream or document for Llama); ``stream`` and ``documents`` use none, so every window is plain
text.  GPTQ joins WikiText-2 training rows with a space; here every stream uses ``"\\n\\n"``.

The fast tokenizer runs once over the whole joined string, which is linear in its length.
"""

from __future__ import annotations

import random

import torch

from prunectl.data.sources import Style, calibration_style, load_texts
from prunectl.errors import UserError

SEPARATOR = "\n\n"


def encode(tokenizer, text: str, *, add_special_tokens: bool = False) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D LongTensor, in one pass of the tokenizer."""
    ids = tokenizer(
        text, add_special_tokens=add_special_tokens, return_attention_mask=False, verbose=False
    )["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_tokens(
    tokenizer,
    dataset: str,
    split: str | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 42,
    *,
    style: Style | None = None,
) -> torch.Tensor:
    """Calibration windows [n, seqlen] (int64); the same seed gives the same tokens.

    ``n == nsamples`` except for the ``rows`` style, where it is however many whole windows the
    sampled rows fill.  ``style`` overrides the dataset's convention.
    """
    if nsamples < 1 or seqlen < 1:
        raise UserError(
            f"calibration needs nsamples >= 1 and seqlen >= 1, got {nsamples} and {seqlen}"
        )
    style = style or calibration_style(dataset)
    texts = load_texts(dataset, split, kind="calibration")
    if style == "rows":
        return _rows(tokenizer, texts, dataset, nsamples, seqlen, seed)
    if style in ("documents", "distinct"):
        return _documents(tokenizer, texts, dataset, nsamples, seqlen, seed,
                          distinct=style == "distinct")
    return _stream(tokenizer, texts, dataset, nsamples, seqlen, seed)


def evaluation_tokens(
    tokenizer, dataset: str, split: str | None = None, *, add_bos: bool = False
) -> torch.Tensor:
    """The evaluation split as one token stream [N]: rows joined with ``"\\n\\n"``.

    ``add_bos`` puts a single BOS token in front of the stream (not of each window).
    """
    ids = encode(tokenizer, SEPARATOR.join(load_texts(dataset, split, kind="evaluation")))
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise UserError(
                f"add_bos is set but the tokenizer of {tokenizer.name_or_path or 'this model'} "
                "has no BOS token; set eval.perplexity.add_bos to false"
            )
        ids = torch.cat([torch.tensor([tokenizer.bos_token_id]), ids])
    return ids


def _stream(tokenizer, texts, dataset, nsamples, seqlen, seed) -> torch.Tensor:
    ids = encode(tokenizer, SEPARATOR.join(texts))
    if ids.numel() < seqlen:
        raise UserError(
            f"calibration text {dataset} has {ids.numel()} tokens, fewer than seqlen={seqlen}; "
            "use more text or a smaller calibration.seqlen"
        )
    _check_overdraw(dataset, ids.numel(), nsamples, seqlen)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=generator)
    return ids[starts[:, None] + torch.arange(seqlen)]


#: windows drawn from a stream may overlap, but not this many times over the whole text
MAX_OVERDRAW = 10


def _check_overdraw(dataset: str, tokens: int, nsamples: int, seqlen: int) -> None:
    """Refuse ``nsamples`` windows that would cover the text more than ``MAX_OVERDRAW`` times:
    they add no information and cost time and disk (100,000 windows of a 6.6k-token text wrote
    a 51 MB token file and calibrated for minutes)."""
    windows = tokens // seqlen
    if nsamples * seqlen > MAX_OVERDRAW * tokens:
        raise UserError(
            f"calibration.nsamples={nsamples} windows of {seqlen} tokens would cover {dataset} "
            f"({tokens} tokens, {windows} distinct windows) {nsamples * seqlen / tokens:.0f} times "
            f"over; use at most {MAX_OVERDRAW * windows} samples or more text"
        )


def _documents(tokenizer, texts, dataset, nsamples, seqlen, seed, distinct=False) -> torch.Tensor:
    rng = random.Random(seed)
    too_short: set[int] = set()
    used: set[int] = set()
    longest = 0
    windows = []
    while len(windows) < nsamples:
        if len(too_short) == len(texts):
            raise UserError(
                f"no document of {dataset} has seqlen={seqlen} tokens (the longest has "
                f"{longest}); use a smaller calibration.seqlen or longer documents"
            )
        if distinct and len(too_short) + len(used) == len(texts):
            raise UserError(
                f"{dataset} has {len(used)} distinct documents of seqlen={seqlen} tokens, fewer "
                f"than calibration.nsamples={nsamples}; lower one of them"
            )
        index = rng.randrange(len(texts))
        if index in too_short or (distinct and index in used):
            continue
        ids = encode(tokenizer, texts[index])
        if ids.numel() < seqlen:
            too_short.add(index)
            longest = max(longest, ids.numel())
            continue
        start = rng.randrange(ids.numel() - seqlen + 1)
        windows.append(ids[start : start + seqlen])
        used.add(index)
    return torch.stack(windows)


def _rows(tokenizer, texts, dataset, nsamples, seqlen, seed) -> torch.Tensor:
    if nsamples > len(texts):
        raise UserError(
            f"calibration.nsamples={nsamples} but {dataset} has {len(texts)} rows in this split; "
            f"use at most {len(texts)}"
        )
    chosen = random.Random(seed).sample(range(len(texts)), nsamples)
    joined = SEPARATOR.join(texts[i] for i in chosen)
    ids = encode(tokenizer, joined, add_special_tokens=True)
    windows = ids.numel() // seqlen
    if windows == 0:
        raise UserError(
            f"the {nsamples} sampled rows of {dataset} give {ids.numel()} tokens, fewer than one "
            f"window of seqlen={seqlen}; raise calibration.nsamples or lower calibration.seqlen"
        )
    return ids[: windows * seqlen].view(windows, seqlen)
