"""Perplexity and the chunked token NLL against direct computations on full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import VOCAB, tiny_model

from prunectl.errors import UserError
from prunectl.evaluation.perplexity import perplexity, token_nll_sum


@pytest.mark.parametrize("chunk_tokens", [1, 5, 17, 4096])
def test_token_nll_sum_matches_cross_entropy_on_full_logits(chunk_tokens):
    torch.manual_seed(0)
    b, s, d, v = 3, 11, 8, 29
    hidden = torch.randn(b, s, d)
    norm = torch.nn.LayerNorm(d)
    head = torch.nn.Linear(d, v, bias=False)
    labels = torch.randint(0, v, (b, s))
    labels[1, 4] = -100  # ignored position
    logits = head(norm(hidden))
    expected = torch.stack(
        [F.cross_entropy(logits[i, :-1], labels[i, 1:], reduction="sum") for i in range(b)]
    )
    got = token_nll_sum(hidden, norm, head, labels, chunk_tokens=chunk_tokens)
    assert got.dtype == torch.float64 and got.shape == (b,)
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


def test_token_nll_sum_without_norm_upcasts_half_logits():
    torch.manual_seed(1)
    hidden = torch.randn(2, 7, 8).bfloat16()
    head = torch.nn.Linear(8, 13, bias=False).bfloat16()
    labels = torch.randint(0, 13, (2, 7))
    expected = F.cross_entropy(
        head(hidden).float()[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), reduction="none"
    ).view(2, 6).sum(1)
    got = token_nll_sum(hidden, None, head, labels, chunk_tokens=3)
    torch.testing.assert_close(got.float(), expected, rtol=1e-6, atol=1e-5)


def _direct_perplexity(model, tokens, seqlen, windows):
    """Per-window ``model(labels=...).loss``, weighted by the tokens each window predicts."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            window = tokens[w * seqlen : (w + 1) * seqlen].unsqueeze(0)
            loss = model(input_ids=window, labels=window).loss
            total += loss.item() * (seqlen - 1)
            count += seqlen - 1
    return math.exp(total / count)


@pytest.fixture(scope="module")
def model_and_tokens():
    model = tiny_model("llama", seed=3)
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(4, VOCAB, (7 * 24 + 5,), generator=generator)
    return model, tokens


def test_perplexity_matches_direct_loop_over_windows(model_and_tokens):
    model, tokens = model_and_tokens
    result = perplexity(model, tokens, seqlen=24, batch_size=3)
    assert result["windows"] == 7 and result["dropped_tail_tokens"] == 5
    assert result["tokens_scored"] == 7 * 23
    assert result["perplexity"] == pytest.approx(_direct_perplexity(model, tokens, 24, 7), rel=1e-5)
    assert result["nll"] == pytest.approx(math.log(result["perplexity"]))


def test_perplexity_is_batch_size_and_chunk_invariant(model_and_tokens):
    model, tokens = model_and_tokens
    reference = perplexity(model, tokens, seqlen=24, batch_size=1, chunk_tokens=10**6)
    for batch_size, chunk in [(2, 7), (7, 1), (4, 4096)]:
        result = perplexity(model, tokens, seqlen=24, batch_size=batch_size, chunk_tokens=chunk)
        assert result["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-5)
        assert result["batch_size"] == batch_size


def test_max_windows_scores_only_the_first_windows(model_and_tokens):
    model, tokens = model_and_tokens
    result = perplexity(model, tokens, seqlen=24, batch_size=2, max_windows=3)
    assert result["windows"] == 3 and result["windows_available"] == 7
    assert result["perplexity"] == pytest.approx(_direct_perplexity(model, tokens, 24, 3), rel=1e-5)


def test_too_few_tokens_for_one_window_is_a_user_error(model_and_tokens):
    model, tokens = model_and_tokens
    with pytest.raises(UserError, match="has 10 tokens, fewer than one window of seqlen=24"):
        perplexity(model, tokens[:10], seqlen=24, batch_size=1)
