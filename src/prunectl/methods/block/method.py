"""``method: block`` (BlockPruner): wiring the search engine to the pipeline's steps.

``score`` computes the first greedy step (every candidate's single-removal perplexity and the
dense perplexity); ``search`` reuses it as decision 1 instead of recomputing it, replays the
decisions already in ``search/progress.jsonl`` and appends each new one as soon as it is made,
so a killed search resumes where it stopped.  Under ``torchrun`` every rank searches (the
engine splits each step's candidates) and only rank 0 reads and appends the progress file.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from prunectl import distributed
from prunectl.methods.base import Method, MethodConfig
from prunectl.methods.block.search import SearchSettings, block_search
from prunectl.plan import Plan
from prunectl.methods.removal_order import (
    ParameterCounts,
    StopRule,
    candidate_counts,
    candidate_names,
    plan_from_decisions,
    stop_rule,
)
from prunectl.modeling.adapters import Adapter


class BlockConfig(MethodConfig):
    name: Literal["block"] = "block"
    #: candidates: attention blocks, MLP blocks, both, or whole decoder layers
    block_type: Literal["mha", "mlp", "mix", "layer"] = "mix"
    #: calibration windows per forward
    batch_size: int = Field(4, ge=1)
    #: drop a candidate once a lower bound of its NLL exceeds the best finished one (exact)
    early_stop: bool = True
    #: likeliest next tokens per position whose exact logits enter that bound
    bound_topk: int = Field(32, ge=1)
    #: where the per-block input cache lives: on the device, spilled to CPU, sparse, or in
    #: memory-mapped scratch files under the project's search/cache/
    cache: Literal["auto", "device", "cpu", "sparse", "disk"] = "auto"
    #: memory budget of that cache in GB (default: half the free device memory)
    cache_budget_gb: float | None = Field(None, gt=0)
    #: evaluate candidates best-previous-score first ("previous") or by block index
    candidates_order: Literal["previous", "index"] = "previous"


class BlockMethod(Method):
    """Greedy perplexity-guided removal of residual blocks (arXiv 2406.10594)."""

    name = "block"
    Config = BlockConfig
    targets = frozenset({"blocks", "params"})

    def _setup(self, inputs) -> tuple[Adapter, list[str], ParameterCounts, SearchSettings]:
        cfg = self.config
        adapter, model = inputs.adapter, inputs.model
        rank = distributed.current().rank
        names = candidate_names(adapter.num_layers, cfg.block_type)
        settings = SearchSettings(
            batch_size=cfg.batch_size,
            early_stop=cfg.early_stop,
            bound_topk=cfg.bound_topk,
            cache=cfg.cache,
            cache_budget_gb=cfg.cache_budget_gb,
            cache_dir=None if inputs.scratch is None else inputs.scratch / f"rank-{rank}",
            candidates_order=cfg.candidates_order,
        )
        return adapter, names, candidate_counts(model, names), settings

    def check_target(self, inputs) -> None:
        _, names, params, _ = self._setup(inputs)
        stop_rule(inputs.target, inputs.model, names, params, "block")

    def score(self, inputs, stats) -> dict[str, torch.Tensor]:
        """Step 1 of the search: single-removal perplexity of every candidate, canonical order."""
        inputs.require_tokens("block search", min_length=2)
        _, names, params, settings = self._setup(inputs)
        result = block_search(inputs.units, names, StopRule(), params, settings,
                              max_steps=1, progress=inputs.ui.progress)
        first = result.decisions[0]
        return {
            "perplexity": torch.tensor([first["scores"][n]["ppl"] for n in names],
                                       dtype=torch.float64),
            "lower_bound": torch.tensor([first["scores"][n]["lower_bound"] for n in names]),
            "removed": torch.tensor([names.index(first["removed"])]),
            "dense_perplexity": torch.tensor([first["dense_perplexity"]], dtype=torch.float64),
            "seconds": torch.tensor([first["seconds"]], dtype=torch.float64),
        }

    def search(self, inputs, scores) -> Plan:
        inputs.require_tokens("block search", min_length=2)
        adapter, names, params, settings = self._setup(inputs)
        model = inputs.model
        target = stop_rule(inputs.target, model, names, params, "block")
        journal = inputs.journal  # the search step's progress.jsonl: rank 0 reads and appends
        previous = journal.records()
        if not previous:
            first = first_decision(scores, names, params)
            if first is not None:
                journal.append(first)
                previous = [first]

        result = block_search(
            inputs.units, names, target, params, settings,
            previous=previous, on_decision=journal.append, progress=inputs.ui.progress,
        )
        dense = {"perplexity": result.decisions[0].get("dense_perplexity")}
        return plan_from_decisions("block", result.decisions, target, adapter.num_layers, params,
                                   dense, result.notes)


def first_decision(
    scores: dict[str, torch.Tensor], names: list[str], params: ParameterCounts
) -> dict | None:
    """Decision 1 rebuilt from the ``score`` step's tensors; None when they are not for these
    candidates (then the search computes step 1 itself)."""
    ppl = scores.get("perplexity")
    if ppl is None or ppl.shape != (len(names),) or "removed" not in scores:
        return None
    flags = scores["lower_bound"].tolist()
    best = int(scores["removed"][0])
    removed = names[best]
    count = params.per_candidate[removed]
    return {
        "step": 1,
        "removed": removed,
        "perplexity": float(ppl[best]),
        **params.removal(count),
        "scores": {n: {"ppl": float(ppl[i]), "lower_bound": bool(flags[i])}
                   for i, n in enumerate(names)},
        "seconds": float(scores["seconds"][0]),
        "dense_perplexity": float(scores["dense_perplexity"][0]),
    }
