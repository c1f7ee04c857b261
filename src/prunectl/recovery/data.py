"""Training examples for recovery: alpaca instructions or plain text, tokenized for a causal LM.

Follows LLM-Pruner's ``post_training.py`` (itself alpaca-lora's ``finetune.py``): the alpaca
prompt template (``render_alpaca``), each example truncated to ``cutoff_len`` tokens with EOS
appended when it fits, the prompt's tokens masked out of the loss (the reference's default
``train_on_inputs=False``), and a seeded hold-out of ``val_set_size`` examples.  Unlike the
reference, an example whose prompt fills ``cutoff_len`` (no response token left) is dropped.
Plain text is joined with blank lines and cut into non-overlapping ``cutoff_len``-token windows
(the reference's ``split_and_tokenizer`` for its extra validation sets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunectl.data.sources import load_texts, render_alpaca
from prunectl.errors import UserError

IGNORE = -100  # label of a token the loss skips


def tokenize_alpaca(row: dict[str, Any], tokenizer, cutoff_len: int) -> dict[str, list[int]]:
    """One example: prompt + response (+ EOS when under ``cutoff_len``), prompt tokens masked."""
    prompt = render_alpaca(row["instruction"], row.get("input"), "")
    full = render_alpaca(row["instruction"], row.get("input"), str(row["output"]))
    ids = tokenizer(full, truncation=True, max_length=cutoff_len)["input_ids"]
    if ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff_len:
        ids = [*ids, tokenizer.eos_token_id]
    prompt_len = len(tokenizer(prompt, truncation=True, max_length=cutoff_len)["input_ids"])
    labels = [IGNORE] * prompt_len + ids[prompt_len:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}


def text_windows(texts: list[str], tokenizer, cutoff_len: int) -> list[dict[str, list[int]]]:
    """Non-overlapping ``cutoff_len``-token windows of the texts joined with blank lines."""
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    return [
        {"input_ids": w, "attention_mask": [1] * cutoff_len, "labels": list(w)}
        for w in (ids[i : i + cutoff_len] for i in range(0, len(ids) - cutoff_len + 1, cutoff_len))
    ]


def alpaca_rows(dataset: str) -> list[dict[str, Any]]:
    """Rows with ``instruction``/``input``/``output``: a local .json/.jsonl file, a ``save_to_disk``
    directory, or a hub dataset id (train split)."""
    import datasets

    path = Path(dataset).expanduser()
    try:
        if path.is_file():
            rows = datasets.load_dataset("json", data_files=str(path), split="train")
        elif path.is_dir():
            rows = datasets.load_from_disk(str(path))
            rows = rows["train"] if isinstance(rows, datasets.DatasetDict) else rows
        else:
            rows = datasets.load_dataset(dataset, split="train")
    except Exception as error:  # datasets raises many types for a missing or offline dataset
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"recover.dataset '{dataset}' could not be loaded ({first}); give a local "
                        ".json/.jsonl file in alpaca format or a reachable dataset id") from None
    missing = {"instruction", "output"} - set(rows.column_names)
    if missing:
        raise UserError(f"recover.dataset '{dataset}' has no {sorted(missing)} column(s); alpaca "
                        "format needs instruction, input and output (or set recover.format: text)")
    return list(rows)


def build_examples(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    """(train, validation) tokenized examples for the recipe's ``recover`` section."""
    import random

    if cfg.format == "alpaca":
        rows = alpaca_rows(cfg.dataset)
        if cfg.max_samples is not None:
            rows = rows[: cfg.max_samples]
        examples = [tokenize_alpaca(row, tokenizer, cfg.cutoff_len) for row in rows]
        # a prompt that fills cutoff_len leaves nothing to learn (and a NaN loss in its batch)
        examples = [e for e in examples if any(label != IGNORE for label in e["labels"])]
    else:
        examples = text_windows(load_texts(cfg.dataset, "train"), tokenizer, cfg.cutoff_len)
        if cfg.max_samples is not None:
            examples = examples[: cfg.max_samples]
    if len(examples) <= cfg.val_set_size:
        raise UserError(
            f"recover.dataset '{cfg.dataset}' gives {len(examples)} examples, not more than "
            f"recover.val_set_size={cfg.val_set_size}; lower val_set_size or give more data"
        )
    order = list(range(len(examples)))
    random.Random(cfg.seed).shuffle(order)
    val = [examples[i] for i in order[: cfg.val_set_size]]
    train = [examples[i] for i in order[cfg.val_set_size :]]
    return train, val
