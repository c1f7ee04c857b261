"""Greedy block search (BlockPruner, arXiv 2406.10594; reference ``block_search.py`` of
MrGGLS/BlockPruner): at each step bypass every remaining candidate in turn, measure calibration
perplexity, remove the one that hurts least.  The removal order is nested.

Pure engine: the block-unit runner's model and calibration tokens in (``Units``, which the
pipeline hands over), decision records out through ``on_decision``;
no files.  Two ways to score a step, both exact:

* ``mode="naive"`` runs the whole model for every candidate, as the reference does;
* ``mode="fast"`` starts each candidate from the cached input of its first block (see
  ``cache``) and, with ``early_stop``, drops a candidate as soon as a lower bound of its NLL
  (see ``bound``: exact logits of the current model's likeliest tokens, Gibbs' inequality for the
  rest) exceeds the best finished candidate's exact total; such a candidate cannot win, never runs
  the LM head, and its score is flagged as a lower bound.  Candidates go in the order of their
  previous-step scores so the best finishes first.

Deviations from the reference: perplexity is exp(total NLL / total predicted tokens) over all
windows (the reference averages per-window mean NLLs, the same for equal-length windows, but it
also drops tokens equal to the pad id, which we do not); ties resolve to the first candidate in
the canonical order (see ``candidates``) whatever order they were evaluated in; whole decoder
layers (``layer``) are an extra unit type, as in SLEB / Shortened LLaMA.

Under ``torchrun`` each step's candidates are split across ranks (the prefix cache is rebuilt on
every rank, which all need it).  Early stopping stays exact: a candidate dropped on rank r has a
bound above a finished candidate's total on rank r, so it cannot be the global minimum.  The ranks'
scores are gathered and every rank picks the same winner by the same (total, canonical index)
rule, so the decision records are identical; only which candidates carry ``lower_bound`` depends
on the number of ranks, and ``seconds`` is the slowest rank's time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.methods.block.candidates import unit_span
from prunectl.methods.removal_order import ParameterCounts, StopRule

if TYPE_CHECKING:
    from prunectl.pipelines.blocks.bound import NllLowerBound
    from prunectl.pipelines.blocks.cache import BoundaryCache, CachePlan
    from prunectl.pipelines.blocks.runner import UnitRunner, Units

Progress = Callable[..., Iterable]


@dataclass
class SearchSettings:
    batch_size: int = 4
    early_stop: bool = True
    cache: str = "auto"
    cache_budget_gb: float | None = None
    cache_dir: Path | None = None  # for cache="disk"
    candidates_order: str = "previous"  # or "index"
    mode: str = "fast"  # or "naive"
    bound_topk: int = 32


@dataclass
class SearchResult:
    decisions: list[dict]  # every decision, replayed ones first
    counts: dict[str, int]  # rows pushed through attention/MLP units and the head
    evaluations: int  # candidate evaluations started in this call (replays cost none)
    cache: CachePlan | None = None
    notes: list[str] = field(default_factory=list)


def _check_previous(previous: list[dict], candidates: list[str]) -> list[str]:
    removed: list[str] = []
    for k, record in enumerate(previous, 1):
        name = record.get("removed")
        if record.get("step") != k or name not in candidates or name in removed:
            raise UserError(
                f"recorded decision {k} ({name!r}) does not fit this model and block_type; "
                "move search/progress.jsonl aside to search afresh"
            )
        removed.append(name)
    return removed


class _Step:
    """Scores one greedy step: every remaining candidate against the current model."""

    def __init__(self, runner: UnitRunner, cache: BoundaryCache | None,
                 bound: NllLowerBound | None, removed: set[int]):
        self.runner, self.cache, self.bound, self.removed = runner, cache, bound, removed

    def _last_hidden(self, b: int, start: int, end: int, skip: set[int]) -> torch.Tensor:
        runner = self.runner
        if self.cache is None:
            return runner.run(runner.embed(b), 0, runner.num_units, skip)
        return runner.run(self.cache.hidden(b, start, self.removed), end, runner.num_units, skip)

    def nll_of(self, name: str, early_limit: float | None) -> tuple[float, bool]:
        """Summed NLL with ``name`` bypassed, or a lower bound of it (``True``) once that bound
        exceeds ``early_limit``: then the candidate cannot win and its LM head is never run."""
        runner = self.runner
        start, end = unit_span(name, runner.adapter.num_layers)
        skip = self.removed | set(range(start, end))
        batches = range(len(runner.batches))
        if early_limit is None or self.bound is None:
            return sum(float(runner.nll(self._last_hidden(b, start, end, skip), b).sum())
                       for b in batches), False
        limit = early_limit + abs(early_limit) * self.bound.margin
        bounded, kept = 0.0, []
        for b in batches:
            hidden = self._last_hidden(b, start, end, skip)
            bounded += self.bound.lower(hidden, b)
            if bounded > limit:
                return bounded, True
            kept.append(hidden.to(self.cache.plan.location))
        exact = sum(float(runner.nll(h.to(runner.device), b).sum()) for b, h in enumerate(kept))
        return exact, False


def block_search(
    units: Units,
    candidates: list[str],
    target: StopRule,
    params: ParameterCounts,
    settings: SearchSettings | None = None,
    previous: list[dict] | None = None,
    on_decision: Callable[[dict], None] | None = None,
    progress: Progress | None = None,
    max_steps: int | None = None,
) -> SearchResult:
    """Greedy search until ``target`` (or ``max_steps`` new decisions, or no candidate left).

    ``previous`` decisions are replayed, not recomputed: their blocks are removed and the search
    continues after them.  Each new decision is passed to ``on_decision`` as soon as it is made.
    The first decision record also carries ``dense_perplexity``.
    """
    settings = settings or SearchSettings()
    decisions = [dict(r) for r in previous or []]
    removed_names = _check_previous(decisions, candidates)
    runner = units.runner(batch_size=settings.batch_size)
    num_layers = runner.adapter.num_layers
    result = SearchResult(decisions, runner.counts, 0)
    remaining = [c for c in candidates if c not in removed_names]
    if target.reached(decisions) or not remaining or max_steps == 0:
        return result

    removed: set[int] = set()
    for name in removed_names:
        removed.update(range(*unit_span(name, num_layers)))
    cache = bound = None
    dense_nll = None
    try:
        with torch.inference_mode():
            if settings.mode == "fast":
                cache = runner.prefix_cache(settings.cache, settings.cache_budget_gb,
                                            settings.cache_dir)
                result.cache = cache.plan
                cache.rebuild(removed, 0)
                # the bound needs logits linear in the final states: soft-capped heads (Gemma 2)
                # score every candidate exactly
                exact_only = runner.adapter.logit_softcap is not None
                bound = (runner.lower_bound(settings.bound_topk)
                         if settings.early_stop and not exact_only else None)
                if bound is not None or not decisions:
                    current = _current_nll(runner, cache, bound, removed)
                    if not decisions:
                        dense_nll = current
            elif not decisions:
                dense_nll = runner.total_nll(removed)
            steps = 0
            while remaining and not target.reached(decisions) and steps != max_steps:
                record = _search_step(runner, cache, bound, removed, remaining, candidates,
                                      decisions, settings, params, progress)
                result.evaluations += len(remaining)
                if dense_nll is not None:
                    record["dense_perplexity"] = math.exp(dense_nll / runner.predicted_tokens)
                    dense_nll = None
                decisions.append(record)
                if on_decision is not None:
                    on_decision(record)
                remaining.remove(record["removed"])
                start, end = unit_span(record["removed"], num_layers)
                removed.update(range(start, end))
                steps += 1
                more = remaining and not target.reached(decisions) and steps != max_steps
                if cache is not None and more:
                    cache.rebuild(removed, start)
                    if bound is not None:
                        _current_nll(runner, cache, bound, removed)
    finally:
        if cache is not None:
            cache.close()
    if not target.reached(decisions) and not remaining and max_steps is None:
        result.notes.append(
            f"every candidate was removed after {len(decisions)} steps; the target was not reached"
        )
    return result


def _current_nll(runner: UnitRunner, cache: BoundaryCache, bound: NllLowerBound | None,
                 removed: set[int]) -> float:
    """The current model's summed NLL, refreshing the bound's likely tokens on the way (the
    same logits serve both); without a bound, only the first step needs it (dense perplexity)."""
    finals = [cache.final(b, removed) for b in range(len(runner.batches))]
    if bound is not None:
        return bound.refresh(finals)
    return sum(float(runner.nll(hidden, b).sum()) for b, hidden in enumerate(finals))


def _order(remaining: list[str], candidates: list[str], decisions: list[dict], how: str,
           cache: BoundaryCache | None):
    """Best-looking first, so the best candidate finishes early and the bound drops the rest:
    by previous-step scores, or at the first step by how little each block changes the residual
    stream (ShortGPT's Block Influence, read off the prefix cache); canonical order otherwise."""
    index = {c: i for i, c in enumerate(candidates)}
    if how != "previous":
        return sorted(remaining, key=index.__getitem__)
    if decisions:
        promise = {c: score["ppl"] for c, score in decisions[-1]["scores"].items()}
    elif cache is not None and cache.plan.stride == 1:
        promise = _influence(cache, remaining)
    else:
        promise = {}
    return sorted(remaining, key=lambda c: (promise.get(c, math.inf), index[c]))


def _influence(cache: BoundaryCache, names: list[str]) -> dict[str, float]:
    """1 - cosine between a block's input and output, summed over tokens; blocks that end at
    the last unit are left out (their output is not cached, and they are cheap to score)."""
    runner = cache.runner
    out = {}
    for name in names:
        start, end = unit_span(name, runner.adapter.num_layers)
        if end >= runner.num_units:
            continue
        out[name] = sum(float((1 - torch.cosine_similarity(
            store[start].float(), store[end].float(), dim=-1)).sum()) for store in cache.store)
    return out


def _search_step(runner, cache, bound, removed, remaining, candidates, decisions, settings, params,
                 progress) -> dict[str, Any]:
    started = time.perf_counter()
    step = _Step(runner, cache, bound, removed)
    index = {c: i for i, c in enumerate(candidates)}
    group = distributed.current()
    # a strided share of the ordered list, so each rank starts with its most promising candidates
    ordered = group.shard(_order(remaining, candidates, decisions, settings.candidates_order,
                                 cache))
    if progress is not None:
        ordered = progress(ordered, total=len(ordered), description=f"step {len(decisions) + 1}")
    best: tuple[float, int, str] | None = None
    scores: dict[str, dict[str, Any]] = {}
    for name in ordered:
        limit = best[0] if settings.early_stop and best is not None else None
        total, stopped = step.nll_of(name, limit)
        scores[name] = {"ppl": math.exp(total / runner.predicted_tokens), "lower_bound": stopped}
        if not stopped and (best is None or (total, index[name]) < best[:2]):
            best = (total, index[name], name)
    shares = group.gather_objects((scores, best, time.perf_counter() - started))
    scores = {name: score for share in shares for name, score in share[0].items()}
    best = min(share[1] for share in shares if share[1] is not None)
    chosen = best[2]
    removed_params = sum(params.per_candidate[d["removed"]] for d in decisions)
    removed_params += params.per_candidate[chosen]
    return {
        "step": len(decisions) + 1,
        "removed": chosen,
        "perplexity": scores[chosen]["ppl"],
        **params.removal(removed_params),
        "scores": {c: scores[c] for c in sorted(scores, key=index.__getitem__)},
        "seconds": max(share[2] for share in shares),
    }
