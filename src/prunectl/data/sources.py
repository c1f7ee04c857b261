"""Where text comes from: named datasets and local files, all read through ``datasets``.

Named datasets load exactly as the reference projects load them (GPTQ/SparseGPT, LLM-Pruner,
FLAP, BlockPruner), so figures stay comparable with papers.  Local files go through the same
``datasets`` code path (``load_dataset("text"|"json"|"parquet", data_files=...)`` and
``load_from_disk``), so a file behaves like the hub dataset it was saved from.

Rows: a ``.txt`` file gives one row per non-empty line (a paragraph split would merge a file of
unbroken lines into one row); ``.json``/``.jsonl``/``.parquet`` and ``save_to_disk`` directories
give one row per record, from the ``text`` or ``sentence`` field, or rendered from the alpaca
``instruction``/``input``/``output`` fields with the Stanford Alpaca template, which is exactly
what the ``text`` field of ``tatsu-lab/alpaca`` holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prunectl.errors import UserError

Kind = Literal["calibration", "evaluation"]
#: how calibration windows are drawn (see ``prunectl.data.tokens``)
Style = Literal["stream", "documents", "distinct", "rows"]

LOCAL_SUFFIXES = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TEXT_FIELDS = ("text", "sentence")
ALPACA_FIELDS = ("instruction", "output")

_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def render_alpaca(instruction: str, input: str | None, output: str) -> str:
    """One alpaca record as the Stanford Alpaca prompt followed by its response."""
    template = _PROMPT_INPUT if input else _PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input or "", output=output)


@dataclass(frozen=True)
class Named:
    """A hub dataset as the reference projects load it."""

    path: str
    config: str | None
    #: default split per kind
    splits: dict[str, str]
    style: Style
    #: per split, when the hub repo holds raw files instead of a prepared dataset
    data_files: dict[str, str] = field(default_factory=dict)
    #: BlockPruner's alpaca: train 80% / validation 10% / test 10%, cut from ``train`` (seed 42)
    derived_splits: bool = False
    #: evaluation uses only the first rows (C4: the 1,100 documents of SparseGPT and LLM-Pruner)
    eval_rows: int | None = None
    #: hub revision; ``refs/convert/parquet`` for repositories whose loading script datasets 4
    #: no longer runs (the hub's own parquet export of the same rows)
    revision: str | None = None


_TRAIN_TEST = {"calibration": "train", "evaluation": "test"}
NAMED: dict[str, Named] = {
    "wikitext2": Named("wikitext", "wikitext-2-raw-v1", _TRAIN_TEST, "stream"),
    "ptb": Named("ptb_text_only", "penn_treebank", _TRAIN_TEST, "stream"),
    "c4": Named(
        "allenai/c4",
        None,
        {"calibration": "train", "evaluation": "validation"},
        "documents",
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
        eval_rows=1100,
    ),
    "alpaca": Named("tatsu-lab/alpaca", None, {"calibration": "test", "evaluation": "validation"},
                    "rows", derived_splits=True),
    "alpaca-cleaned": Named("yahma/alpaca-cleaned", None,
                            {"calibration": "test", "evaluation": "validation"}, "rows",
                            derived_splits=True),
    # LLM-Pruner's example samples: distinct random rows long enough for a window
    "bookcorpus": Named("bookcorpus/bookcorpus", None,
                        {"calibration": "train", "evaluation": "train"}, "distinct",
                        revision="refs/convert/parquet"),
    # ShortGPT's Block Influence data: random books of PG-19's validation split
    "pg19": Named("deepmind/pg19", None, {"calibration": "validation", "evaluation": "test"},
                  "documents", revision="refs/convert/parquet"),
}
BUILTIN = "pydoc-topics"
ACCEPTED = (
    f"one of {', '.join([*NAMED, BUILTIN])}, or a local .txt/.json/.jsonl/.parquet file "
    "or a save_to_disk directory"
)


def calibration_style(dataset: str) -> Style:
    """The references' window convention for this dataset (``rows`` for alpaca, else streams)."""
    named = NAMED.get(dataset)
    return named.style if named else "stream"


def load_texts(dataset: str, split: str | None = None, *, kind: Kind = "calibration") -> list[str]:
    """The rows of ``dataset`` (a name or a local path), from ``split`` or the kind's default."""
    if dataset in NAMED:
        return _named_texts(dataset, split, kind)
    if dataset == BUILTIN:
        from prunectl.data.builtin import pydoc_topics

        return pydoc_topics(split or ("train" if kind == "calibration" else "test"))
    path = Path(dataset).expanduser()
    if path.is_dir():
        return _disk_texts(path, split, kind)
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        raise UserError(f"unknown dataset '{dataset}'; use {ACCEPTED}")
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist; use {ACCEPTED}")
    if split not in (None, "train"):
        raise UserError(
            f"dataset file {path} has a single split; leave split unset (got '{split}')"
        )
    from datasets import load_dataset

    builder = LOCAL_SUFFIXES[path.suffix.lower()]
    if builder != "parquet":
        _check_text_file(path)
    try:
        with _quiet_datasets():
            rows = load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:  # datasets raises many types for a malformed file
        raise UserError(f"could not read dataset file {path}: {_first_line(error)}") from error
    texts = _rows_to_texts(rows, str(path))
    if builder == "text":
        texts = [t for t in texts if t.strip()]
    return _non_empty(texts, str(path))


def _named_texts(name: str, split: str | None, kind: Kind) -> list[str]:
    import datasets

    spec = NAMED[name]
    split = split or spec.splits[kind]
    allowed = tuple(spec.data_files) or ("train", "validation", "test")
    if split not in allowed:
        raise UserError(f"dataset {name} has no split '{split}'; use one of: {', '.join(allowed)}")
    hub_split = "train" if spec.derived_splits else split
    files = {hub_split: spec.data_files[hub_split]} if spec.data_files else None
    try:
        with _quiet_datasets():
            pinned = {"revision": spec.revision} if spec.revision else {}
            rows = datasets.load_dataset(spec.path, spec.config, data_files=files, split=hub_split,
                                         **pinned)
    except ConnectionError as error:
        raise UserError(
            f"could not reach the Hugging Face hub to load {name} ({spec.path}); "
            f"connect to it or pass a local .txt/.jsonl/.parquet file or save_to_disk directory"
        ) from error
    except Exception as error:
        raise UserError(f"could not load {name} ({spec.path}): {_first_line(error)}") from error
    if spec.derived_splits:
        rows = _derive_split(rows, split)
    if kind == "evaluation" and spec.eval_rows is not None:
        rows = rows.select(range(min(spec.eval_rows, len(rows))))
    return _non_empty(_rows_to_texts(rows, name), name)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars: prunectl's own UI decides what the terminal shows."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _derive_split(rows, split: str):
    """BlockPruner's alpaca splits: 20% held out of train (seed 42), halved into test/validation."""
    parts = rows.train_test_split(test_size=0.2, seed=42)
    if split == "train":
        return parts["train"]
    held_out = parts["test"].train_test_split(test_size=0.5, seed=42)
    return held_out["train"] if split == "test" else held_out["test"]


def _disk_texts(path: Path, split: str | None, kind: Kind) -> list[str]:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except FileNotFoundError as error:
        raise UserError(
            f"directory {path} is not a dataset saved with save_to_disk; use {ACCEPTED}"
        ) from error
    if isinstance(loaded, DatasetDict):
        if split is None:
            preferred = ("train",) if kind == "calibration" else ("test", "validation")
            split = next((s for s in preferred if s in loaded), None)
        if split not in loaded:
            raise UserError(
                f"dataset {path} has no split '{split}'; use one of: {', '.join(loaded)}"
            )
        loaded = loaded[split]
    elif split not in (None, "train"):
        raise UserError(f"dataset {path} has a single split; leave split unset (got '{split}')")
    return _non_empty(_rows_to_texts(loaded, str(path)), str(path))


def _rows_to_texts(rows, source: str) -> list[str]:
    columns = rows.column_names
    for name in TEXT_FIELDS:
        if name in columns:
            return [t for t in rows[name] if t is not None]
    if all(name in columns for name in ALPACA_FIELDS):
        inputs = rows["input"] if "input" in columns else [None] * len(rows)
        records = zip(rows["instruction"], inputs, rows["output"])
        return [render_alpaca(i, x, o) for i, x, o in records]
    raise UserError(
        f"{source} has no text field (columns: {', '.join(columns) or 'none'}); "
        f"expected 'text', 'sentence', or alpaca 'instruction'/'input'/'output'"
    )


def _check_text_file(path: Path) -> None:
    """An empty or binary file in one line naming it (``datasets`` says only "An error
    occurred while generating the dataset").  The first 64 KiB decide."""
    import codecs

    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.strip():
        raise UserError(f"{path} holds no text rows (the file is empty or blank); use a file "
                        "with text in it")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} holds no text rows: it is not UTF-8 text (byte {error.start} "
                        "is not; a binary file?); use a text file") from None


def _non_empty(texts: list[str], source: str) -> list[str]:
    if not any(t.strip() for t in texts):
        raise UserError(f"{source} holds no text; use {ACCEPTED}")
    return texts


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
