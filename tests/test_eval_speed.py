"""Speed and memory measurement on a tiny model: every field present, consistent and re-checked."""

from __future__ import annotations

import statistics

import pytest
import torch
from helpers import byte_tokenizer, save_tiny, tiny_model

from prunectl.errors import UserError
from prunectl.evaluation.results import speed_ratios
from prunectl.evaluation.speed import measure_speed
from prunectl.plan import LayerPlan, Plan
from prunectl.formats.hf import save_model
from prunectl.modeling.surgery import apply_plan

SMALL = dict(
    prefill_lengths=(16, 64, 1024), decode_tokens=4, decode_batches=(1, 2), warmup=1, repeats=2
)


@pytest.fixture(scope="module")
def dense_and_pruned(tmp_path_factory):
    """The dense tiny model and a non-uniform pruned one (our own modeling class: a removed
    attention block, fewer heads and channels in another layer), each saved to disk."""
    dense_dir = save_tiny(tmp_path_factory.mktemp("dense"))
    dense = measure_speed(
        tiny_model("llama"), byte_tokenizer(), device="cpu", model_dir=dense_dir, **SMALL
    )
    plan = Plan(
        method="manual",
        layers={
            1: LayerPlan(attention=False),
            2: LayerPlan(q_heads=[0, 2], kv_heads=[0, 1], mlp_channels=list(range(40))),
        },
    )
    pruned_model = apply_plan(tiny_model("llama"), plan)
    pruned_dir = save_model(
        pruned_model, byte_tokenizer(), tmp_path_factory.mktemp("pruned") / "model"
    )
    pruned_model.train()
    pruned = measure_speed(pruned_model, 260, model_dir=pruned_dir, **SMALL)
    assert pruned_model.training  # the caller's mode is restored
    return dense, pruned, dense_dir


def _rate_fields_ok(row):
    return (
        0 < row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
        and row["repeats"] == 2
    )


def test_every_field_is_measured(dense_and_pruned):
    dense, _, dense_dir = dense_and_pruned
    model = tiny_model("llama")
    # prefill: lengths past max_position_embeddings (512) are clipped, and the clipping is noted
    assert [r["seq_len"] for r in dense["prefill"]] == [16, 64, 512]
    assert any("512" in note for note in dense["notes"])
    assert all(_rate_fields_ok(r) and r["batch"] == 1 for r in dense["prefill"])
    for row in dense["prefill"]:  # the figures follow from the recorded timings
        rates = [row["seq_len"] / s for s in row["seconds"]]
        assert row["tokens_per_s"] == pytest.approx(statistics.median(rates))
        assert (row["tokens_per_s_min"], row["tokens_per_s_max"]) == pytest.approx(
            (min(rates), max(rates))
        )
    assert [(r["batch"], r["new_tokens"]) for r in dense["decode"]] == [(1, 4), (2, 4)]
    assert all(_rate_fields_ok(r) for r in dense["decode"])
    for row in dense["decode"]:  # decode counts the steps after the first token
        rates = [row["batch"] * (row["new_tokens"] - 1) / s for s in row["seconds"]]
        assert row["tokens_per_s"] == pytest.approx(statistics.median(rates))

    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    assert dense["memory"]["weights_bytes"] == weights
    assert dense["memory"]["source"] in {"cpu_peak_rss", "cpu_ru_maxrss_process_lifetime"}
    assert dense["memory"]["peak_bytes"] > weights  # resident memory holds at least the weights
    assert dense["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert dense["disk_bytes"] == sum(p.stat().st_size for p in dense_dir.rglob("*") if p.is_file())
    assert dense["device"]["type"] == "cpu" and dense["device"]["name"]
    assert dense["versions"]["torch"] == torch.__version__ and dense["dtype"] == "float32"
    assert dense["settings"]["repeats"] == 2 and dense["settings"]["warmup"] == 1


def test_ratios_pruned_over_dense(dense_and_pruned):
    dense, pruned, _ = dense_and_pruned
    ratios = speed_ratios(pruned, dense)
    for row, base in zip(pruned["prefill"], dense["prefill"], strict=True):
        assert ratios[f"prefill_{row['seq_len']}"] == round(
            row["tokens_per_s"] / base["tokens_per_s"], 4
        )
    for row, base in zip(pruned["decode"], dense["decode"], strict=True):
        assert ratios[f"decode_b{row['batch']}"] == round(
            row["tokens_per_s"] / base["tokens_per_s"], 4
        )
    assert ratios["parameters"] == round(
        pruned["parameters"]["total"] / dense["parameters"]["total"], 4
    )
    assert ratios["parameters"] < 1 and ratios["disk"] < 1
    assert ratios["same_device"] is True
    assert speed_ratios(pruned, {**dense, "dtype": "bfloat16"})["same_device"] is False


def test_decode_needs_two_tokens():
    with pytest.raises(UserError, match="decode_tokens=1"):
        measure_speed(tiny_model("llama"), 260, decode_tokens=1)
