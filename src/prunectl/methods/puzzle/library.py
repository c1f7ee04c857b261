"""The puzzle library (``score`` step): every block variant of the dense model, scored alone.

For each layer and each of its two residual blocks (attention: ``o_proj``; MLP: ``down_proj``):

1. ``H = E[x~ x~^T]`` of the projection's dense input with a constant 1 appended (float64, one
   block at a time), on the calibration windows;
2. the units' importance order (:mod:`.importance`); the variant keeping ``g`` units keeps the
   first ``g`` of it (:mod:`.variants` lists the counts);
3. each variant's projection (``method.reconstruct``): ``least_squares`` re-solves the kept
   columns and the bias on ``H`` (the inputs are dense, so the target is the block's own dense
   output), ``bld`` distils the whole block from there (:mod:`prunectl.methods.width.bld`),
   ``bias`` folds the removed columns' calibration mean into the bias (FLAP), ``none`` zeroes
   them; a fully removed block outputs nothing (not even a bias);
4. its score (``method.score``): ``kl`` — mean over the predicted calibration positions (all but
   each window's last, as perplexity counts them) of ``KL(p_dense || p_variant)`` of the
   next-token distribution, in nats (log-softmax in float32, sums in float64); ``local`` — mean
   over calibration tokens of ``||block_variant(x) - block_dense(x)||^2`` on the block's dense
   inputs.  A variant is emulated by a forward hook on its projection that computes what the
   sliced model computes; ``kl`` starts from the block search's prefix cache, so only the units
   from the variant's block on run.  Dense variants score 0 without running.

The block's order is computed once (from the statistics of every window) and journaled before
its first variant; every variant of the block reuses it, and a resumed build reads it back.
A progress bar weighs each variant by the unit forwards its score runs (:func:`_work`); after the
first layer this run computes, one line estimates the time the rest of the library will take.

Progress goes to ``inputs.journal`` (each block's order, each scored variant, all carrying the
journal's key); a rerun skips what a journal with the same key holds, so an interrupted build
finishes with exactly the tensors of an uninterrupted one.

Under ``torchrun`` the blocks still to do are split across ranks, each block whole on one rank
(its order, statistics and every variant: the same computation as in one process, so the
library is bit-identical to the one-process one).  The blocks go heaviest first (by the work
left in them) in turns of one block per rank, so a turn's blocks cost about the same; after each
turn the ranks' journal lines are gathered, every rank adds them to its tensors and rank 0, the
only writer, journals the other ranks' lines (its own it journals as it goes).  A killed rank
loses at most its current block's lines; the progress bar and the estimate are rank 0's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.methods.inputs import Inputs
from prunectl.methods.puzzle.config import DEFAULT_SCORE_WINDOWS, PuzzleConfig
from prunectl.methods.puzzle.importance import unit_columns, unit_order
from prunectl.methods.puzzle.variants import attention_kept, mlp_kept
from prunectl.methods.width.compensation import compensation_bias
from prunectl.methods.width.least_squares import augmented, solve_kept
from prunectl.methods.width.moments import SecondMoments
from prunectl.methods.width.bld import distill_block
from prunectl.methods.width.reconstruct import (
    REFITS,
    TOKENS_PER_INPUT,
    full_weight,
    without_columns,
)
from prunectl.methods.width.sequential import Solution, hook_solution
from prunectl.modeling.alignment import alignment

if TYPE_CHECKING:
    from prunectl.pipelines.blocks.cache import BoundaryCache

BLOCKS = ("attn", "mlp")
#: the dense log-probabilities KL scoring compares against are kept up to this size (float32)
LOG_PROBS_CACHE_BYTES = 2**30


def variant_weight(reconstruct: str, weight: torch.Tensor, h: torch.Tensor, kept: torch.Tensor,
                   damp: float, what: str = "puzzle") -> torch.Tensor:
    """The variant's augmented ``[W', b']`` ([out, n + 1], float64, removed columns zero) for
    the dense augmented ``weight`` keeping input channels ``kept``."""
    n = weight.shape[1] - 1
    kept = kept.to(weight.device)
    if reconstruct in REFITS and kept.numel():
        return full_weight(solve_kept(weight, h, h, kept, damp, what), kept, n)
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    mask[kept] = False
    removed = mask.nonzero().squeeze(1).tolist()
    out = without_columns(weight, removed)
    if reconstruct == "bias" and kept.numel():
        out[:, n] += compensation_bias(weight[:, :-1], h[:-1, n], removed)
    return out


def log_probs(adapter, hidden: torch.Tensor, chunk_tokens: int) -> Iterator[torch.Tensor]:
    """Next-token log-probabilities at positions ``0 .. seq-2`` of final hidden states
    ``hidden`` ([rows, seq, dim], before the final norm), a chunk of positions at a time so the
    vocabulary-wide logits never exceed about ``chunk_tokens`` rows."""
    rows, length = hidden.shape[:2]
    step = max(1, chunk_tokens // max(rows, 1))
    for start in range(0, length - 1, step):
        stop = min(start + step, length - 1)
        yield F.log_softmax(adapter.logits(hidden[:, start:stop]).float(), dim=-1)


def kl_sum(dense: Iterable[torch.Tensor], variant: Iterable[torch.Tensor]) -> float:
    """Summed ``KL(p_dense || p_variant)`` over the positions of matching log-prob chunks."""
    return sum(float((logp.exp() * (logp - logq)).sum(dim=-1, dtype=torch.float64).sum())
               for logp, logq in zip(dense, variant, strict=True))


class _Dense:
    """The dense model's unit boundaries on the calibration windows (built on first use)."""

    def __init__(self, inputs: Inputs, windows: int | None = None):
        self.runner = inputs.units.runner(windows)
        self.cache: BoundaryCache | None = None
        self.finals: list[torch.Tensor] = []
        self._log_probs: dict[int, list[torch.Tensor]] = {}

    def ready(self) -> _Dense:
        if self.cache is None:
            runner = self.runner
            self.cache = runner.prefix_cache()
            self.cache.rebuild(set(), 0)
            self.finals = [self.cache.final(b, set()).to(self.cache.plan.location)
                           for b in range(len(runner.batches))]
        return self

    def boundary(self, b: int, unit: int) -> torch.Tensor:
        """The input of ``unit`` (``num_units``: the final hidden states) for batch ``b``."""
        if unit == self.runner.num_units:
            return self.finals[b].to(self.runner.device)
        return self.cache.hidden(b, unit, set())

    def log_probs(self, b: int) -> Iterable[torch.Tensor]:
        """Batch ``b``'s dense next-token log-probabilities, as :func:`kl_sum` reads them: kept
        after first use when every batch's fit ``LOG_PROBS_CACHE_BYTES`` (every variant compares
        against them, and the vocabulary-wide head costs as much as several layers), otherwise
        recomputed from the cached final hidden states each time."""
        runner = self.runner
        if b in self._log_probs:
            return self._log_probs[b]
        chunks = log_probs(runner.adapter, self.boundary(b, runner.num_units), runner.chunk_tokens)
        positions = sum(batch.shape[0] * (batch.shape[1] - 1) for batch in runner.batches)
        if positions * runner.adapter.lm_head.weight.shape[0] * 4 > LOG_PROBS_CACHE_BYTES:
            return chunks
        self._log_probs[b] = list(chunks)
        return self._log_probs[b]

    def close(self) -> None:
        self._log_probs.clear()
        if self.cache is not None:
            self.cache.close()


def _moments(dense: _Dense, unit: int, linear: torch.nn.Linear) -> SecondMoments:
    runner = dense.runner
    moments = SecondMoments(linear.in_features, False, runner.device)
    handle = linear.register_forward_pre_hook(lambda _m, args: moments.update(args[0]))
    try:
        for b in range(len(runner.batches)):
            runner.run(dense.boundary(b, unit), unit, unit + 1, set())
    finally:
        handle.remove()
    return moments


def _score(how: str, dense: _Dense, unit: int, linear: torch.nn.Linear,
           solution: Solution | None) -> float:
    """The variant's score; ``solution`` None: the block removed (its unit is skipped)."""
    runner = dense.runner
    skip = {unit} if solution is None else set()
    handles = [] if solution is None else hook_solution(runner.adapter.model, linear, solution)
    total, count = 0.0, 0
    try:
        for b, batch in enumerate(runner.batches):
            x = dense.boundary(b, unit)
            if how == "kl":
                hidden = runner.run(x, unit, runner.num_units, skip)
                total += kl_sum(dense.log_probs(b),
                                log_probs(runner.adapter, hidden, runner.chunk_tokens))
                count += batch.shape[0] * (batch.shape[1] - 1)
            else:
                out = runner.run(x, unit, unit + 1, skip)
                diff = out.double() - dense.boundary(b, unit + 1).double()
                total += float(diff.pow(2).sum())
                count += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return total / count


def _check(adapter) -> tuple[int, int]:
    """``G`` and ``C``, the same in every layer (the library's tensors are rectangular)."""
    if adapter.family.moe:
        raise UserError("method puzzle needs dense MLPs; this is a mixture-of-experts model")
    shapes = {(adapter.num_kv_heads(i), adapter.intermediate_size(i))
              for i in range(adapter.num_layers)}
    if len(shapes) != 1 or 0 in next(iter(shapes)):
        raise UserError("method puzzle needs a dense model whose layers all have the same "
                        "attention and MLP widths; score the unpruned model")
    return next(iter(shapes))


def _absorb(done: dict[tuple[int, str], dict], records: Iterable[dict]) -> None:
    """Add journal records (a block's ``order``, a variant's ``score``) to ``done``: per
    (layer, block) its ``order`` and ``scores``."""
    for record in records:
        entry = done.setdefault((record["layer"], record["block"]), {"scores": {}})
        if "order" in record:
            entry["order"] = record["order"]
        else:
            entry["scores"][record["kept"]] = record["score"]


def _recorded(inputs: Inputs) -> dict[tuple[int, str], dict]:
    """What a journal with this key holds: per (layer, block) its ``order`` and ``scores``."""
    done: dict[tuple[int, str], dict] = {}
    _absorb(done, (r for r in inputs.journal.records() if r.get("key") == inputs.journal.key))
    return done


@torch.inference_mode()
def build_library(inputs: Inputs, config: PuzzleConfig) -> dict[str, torch.Tensor]:
    """The library tensors of :mod:`prunectl.methods.puzzle` for the dense ``inputs.model``."""
    tokens = inputs.require_tokens("method puzzle's library", min_length=2)
    windows = config.score_windows
    if windows == DEFAULT_SCORE_WINDOWS:
        windows = min(windows, tokens.shape[0])
    if windows is not None and windows > tokens.shape[0]:
        raise UserError(f"method.score_windows={config.score_windows} exceeds the "
                        f"{tokens.shape[0]} calibration windows; lower it or raise "
                        "calibration.nsamples")
    adapter = inputs.adapter
    groups, channels = _check(adapter)
    if config.reconstruct in REFITS and tokens.numel() < TOKENS_PER_INPUT * channels:
        inputs.ui.warn(f"method puzzle: {config.reconstruct} fits up to {channels + 1} weights per "
                       f"output row on {tokens.numel()} calibration tokens and will overfit; "
                       f"calibrate on at least {TOKENS_PER_INPUT * channels} tokens or raise "
                       "method.reconstruct_damp")
    multiple = alignment(config.round_to, [channels])
    kept_counts = {"attn": attention_kept(groups),
                   "mlp": mlp_kept(channels, config.mlp_widths, multiple)}
    layers = adapter.num_layers
    orders = {block: torch.zeros(layers, units, dtype=torch.long)
              for block, units in (("attn", groups), ("mlp", channels))}
    scores = {block: torch.zeros(layers, len(kept_counts[block]), dtype=torch.float64)
              for block in BLOCKS}
    done = _recorded(inputs)
    dense = _Dense(inputs)
    scoring = dense if windows in (None, tokens.shape[0]) else _Dense(inputs, windows)
    tasks = [(i, block) for i in range(layers) for block in BLOCKS]
    work = {(i, block): _work(config, dense.runner.num_units, 2 * i + (block == "mlp"))
            for i, block in tasks}
    total = sum(work[task] * (len(kept_counts[task[1]]) - 1) for task in tasks)
    recorded = sum(work[task] * len(done.get(task, {"scores": {}})["scores"]) for task in tasks)
    todo = {}
    for i, block in tasks:
        entry = done.get((i, block), {"scores": {}})
        units = orders[block].shape[1]
        todo[i, block] = [k for k in kept_counts[block] if k != units and k not in entry["scores"]]
    pending = [task for task in tasks if "order" not in done.get(task, {}) or todo[task]]
    group = distributed.current()
    if group.enabled:  # heaviest first: a turn's blocks cost about the same on every rank
        pending.sort(key=lambda task: -work[task] * len(todo[task]))
    try:
        with inputs.ui.meter("puzzle library", total, recorded, "variant") as meter:
            for start in range(0, len(pending), group.world_size):
                turn = pending[start:start + group.world_size]
                lines: list[dict] = []
                if group.rank < len(turn):
                    i, block = turn[group.rank]
                    lines = _block(inputs, config, dense.ready(), scoring.ready(), i, block,
                                   done.get((i, block), {"scores": {}}), todo[i, block],
                                   lambda: meter.advance(work[i, block]))
                for rank, share in enumerate(group.gather_objects(lines)):
                    _absorb(done, share)
                    if rank == group.rank:
                        continue
                    for line in share:  # rank 0 journals the others' results
                        inputs.journal.append(line)
                        if "score" in line:
                            meter.advance(work[line["layer"], line["block"]])
                if any(block == "mlp" for _, block in turn):  # both kinds of block measured
                    meter.estimate()
    finally:
        dense.close()
        scoring.close()
    for i, block in tasks:
        entry, units = done[i, block], orders[block].shape[1]
        orders[block][i] = torch.tensor(entry["order"])
        for column, k in enumerate(kept_counts[block]):
            scores[block][i, column] = 0.0 if k == units else entry["scores"][k]
    return {"attn.order": orders["attn"], "attn.score": scores["attn"],
            "mlp.order": orders["mlp"], "mlp.score": scores["mlp"],
            "mlp.channels": torch.tensor(kept_counts["mlp"], dtype=torch.long).repeat(layers, 1)}


def _work(config: PuzzleConfig, num_units: int, unit: int) -> int:
    """What scoring one variant of ``unit`` costs, in unit forwards on the scoring windows:
    ``kl`` runs the suffix from the variant's unit on (the head counted as one more unit),
    ``local`` the unit alone; the progress bar and the time estimate weigh variants by it."""
    return num_units - unit + 1 if config.score == "kl" else 1


def _variant(config: PuzzleConfig, dense: _Dense, unit: int, linear: torch.nn.Linear,
             weight: torch.Tensor, h: torch.Tensor, kept: torch.Tensor, what: str) -> Solution:
    """The variant keeping input channels ``kept``, as the sliced model holds it (model dtype):
    its projection healed by ``config.reconstruct``; ``bld`` then distils the whole block
    toward the dense one on its dense inputs from every calibration window (Puzzle's BLD)."""
    solved = variant_weight(config.reconstruct, weight, h, kept, config.reconstruct_damp, what)
    removed = sorted(set(range(weight.shape[1] - 1)) - set(kept.tolist()))
    solution = Solution(removed, solved)
    if config.reconstruct == "bld":
        runner = dense.runner
        layer, block = divmod(unit, 2)
        adapter = runner.adapter
        module = adapter.mlp(layer) if block else adapter.attention(layer)
        prefix = next(n for n, m in adapter.model.named_modules() if m is module)
        batches = [dense.boundary(b, unit) for b in range(len(runner.batches))]
        solution = distill_block(module, linear, solution,
                                 lambda x: runner.run(x, unit, unit + 1, set()), batches,
                                 config.bld_steps, config.bld_lr, config.bld_seed, prefix)
    dtype = linear.weight.dtype
    return Solution(solution.removed, solution.weight.to(dtype),
                    {k: t.to(dtype) for k, t in solution.trained.items()})


def _block(inputs: Inputs, config: PuzzleConfig, dense: _Dense, scoring: _Dense, i: int,
           block: str, entry: dict, todo: list[int], scored=lambda: None) -> list[dict]:
    """Order and score layer ``i``'s ``block`` (what ``entry`` lacks), journaling each result
    (on rank 0: the other ranks' lines travel back to it) and returning the journal lines:
    statistics from every calibration window (``dense``), scores from ``scoring``'s."""
    adapter, journal = inputs.adapter, inputs.journal
    lines: list[dict] = []

    def record(line: dict) -> None:
        journal.append(line)
        lines.append(line)

    unit = 2 * i + (block == "mlp")
    linear = adapter.o_proj(i) if block == "attn" else adapter.down_proj(i)
    h = _moments(dense, unit, linear).h
    weight = augmented(linear.weight, linear.bias).to(h.device)
    what = f"layers.{i}.{'o_proj' if block == 'attn' else 'down_proj'}"
    if "order" not in entry:
        order = unit_order(config.importance, adapter, i, block, weight, h,
                           config.reconstruct_damp)
        entry = {**entry, "order": order.tolist()}
        record({"key": journal.key, "layer": i, "block": block, "order": entry["order"]})
    columns = unit_columns(adapter, i, block)
    order = torch.tensor(entry["order"], dtype=torch.long)
    for k in todo:
        kept = columns[order[:k]].reshape(-1).sort().values
        solved = None if k == 0 else _variant(config, dense, unit, linear, weight, h, kept, what)
        score = _score(config.score, scoring, unit, linear, solved)
        record({"key": journal.key, "layer": i, "block": block, "kept": k, "score": score})
        scored()
    del h
    return lines
