"""Text sources: every local format through ``datasets``, named datasets' hub requests, errors."""

from __future__ import annotations

import json

import datasets
import pytest

from prunectl.data import load_texts, render_alpaca
from prunectl.errors import UserError

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


def test_txt_gives_one_row_per_non_empty_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond line\n   \nthird line\n")
    assert load_texts(str(path)) == ["first line", "second line", "third line"]
    assert load_texts(str(path), kind="evaluation") == ["first line", "second line", "third line"]


def test_jsonl_text_field_and_parquet(tmp_path):
    rows = [{"text": f"document {i}", "url": "x"} for i in range(5)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_texts(str(jsonl)) == [f"document {i}" for i in range(5)]
    parquet = tmp_path / "docs.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert load_texts(str(parquet), kind="evaluation") == [f"document {i}" for i in range(5)]


def test_alpaca_json_is_rendered_with_the_stanford_template(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(RECORDS))
    texts = load_texts(str(path))
    assert texts[0] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue."
    )
    assert texts[1] == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5"
    )
    assert texts[1] == render_alpaca("Add the numbers.", "2 and 3", "5")


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"sentence": ["a b c", "d e f"]}).save_to_disk(str(single))
    assert load_texts(str(single)) == ["a b c", "d e f"]

    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": [f"{name} row"]}) for name in ("train", "test")}
    ).save_to_disk(str(splits))
    assert load_texts(str(splits)) == ["train row"]
    assert load_texts(str(splits), kind="evaluation") == ["test row"]
    assert load_texts(str(splits), "train", kind="evaluation") == ["train row"]
    with pytest.raises(UserError, match="has no split 'validation'; use one of: train, test"):
        load_texts(str(splits), "validation")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("wikitext3", None, r"unknown dataset 'wikitext3'; use one of wikitext2, ptb, c4, alpaca"),
        ("missing.jsonl", None, r"missing.jsonl does not exist; use one of wikitext2"),
        ("plain_dir", "dir", r"plain_dir is not a dataset saved with save_to_disk"),
        ("bad.jsonl", '{"body": "x"}\n',
         r"bad.jsonl has no text field \(columns: body\); expected 'text'"),
        ("empty.txt", "\n\n  \n", r"empty.txt holds no text"),
        ("broken.json", "{not json", r"could not read dataset file .*broken.json"),
    ],
)
def test_bad_sources_are_user_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
        (path / "x.bin").write_bytes(b"0")
    elif content is not None:
        path.write_text(content)
    target = name if content is None and "." not in name else str(path)
    with pytest.raises(UserError, match=message):
        load_texts(target)


def test_a_local_file_has_one_split(text_file):
    with pytest.raises(UserError, match="has a single split; leave split unset \\(got 'test'\\)"):
        load_texts(str(text_file), "test")


def test_named_dataset_without_hub_suggests_a_local_file(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="could not reach the Hugging Face hub to load wikitext2 "
                       r"\(wikitext\); connect to it or pass a local"):
        load_texts("wikitext2", kind="evaluation")


def test_named_dataset_rejects_unknown_split():
    message = "dataset c4 has no split 'test'; use one of: train, validation"
    with pytest.raises(UserError, match=message):
        load_texts("c4", "test")


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records each request and returns rows."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.calls = []

    def __call__(self, path, name=None, data_files=None, split=None):
        self.calls.append((path, name, data_files, split))
        return self.dataset


def test_named_requests_match_the_references(monkeypatch):
    hub = FakeHub(datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(1500)]}))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert len(load_texts("wikitext2", kind="evaluation")) == 1500
    assert len(load_texts("c4", kind="evaluation")) == 1100  # SparseGPT's first 1,100 documents
    assert len(load_texts("c4")) == 1500
    assert hub.calls == [
        ("wikitext", "wikitext-2-raw-v1", None, "test"),
        ("allenai/c4", None, {"validation": "en/c4-validation.00000-of-00008.json.gz"},
         "validation"),
        ("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz"}, "train"),
    ]
    hub.dataset = datasets.Dataset.from_dict({"sentence": ["a sentence"]})
    assert load_texts("ptb") == ["a sentence"]
    assert hub.calls[-1] == ("ptb_text_only", "penn_treebank", None, "train")


def test_alpaca_splits_follow_blockpruner(monkeypatch):
    rows = [{"text": f"row {i}", "instruction": "", "input": "", "output": ""} for i in range(1000)]
    hub = FakeHub(datasets.Dataset.from_list(rows))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    calibration = load_texts("alpaca")
    validation = load_texts("alpaca", kind="evaluation")
    train = load_texts("alpaca", "train")
    assert (len(train), len(calibration), len(validation)) == (800, 100, 100)
    assert set(train) | set(calibration) | set(validation) == {r["text"] for r in rows}
    assert calibration == load_texts("alpaca", "test")
    assert {call[:2] + call[3:] for call in hub.calls} == {("tatsu-lab/alpaca", None, "train")}
