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
from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.methods.block.candidates import candidate_names
from prunectl.methods.block.plans import parameter_counts, plan_from_decisions, resolve_target
from prunectl.methods.block.search import (
    ParameterCounts,
    SearchSettings,
    Target,
    block_search,
)
from prunectl.methods.plan import Plan
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

    def _setup(self, run, model) -> tuple[Adapter, list[str], ParameterCounts, SearchSettings]:
        cfg = self.config
        adapter = Adapter(model)
        names = candidate_names(adapter.num_layers, cfg.block_type)
        settings = SearchSettings(
            batch_size=cfg.batch_size,
            early_stop=cfg.early_stop,
            bound_topk=cfg.bound_topk,
            cache=cfg.cache,
            cache_budget_gb=cfg.cache_budget_gb,
            cache_dir=run.project.path("search", "cache", f"rank-{distributed.current().rank}"),
            candidates_order=cfg.candidates_order,
        )
        return adapter, names, parameter_counts(model, adapter, names), settings

    @staticmethod
    def _require_tokens(tokens: torch.Tensor) -> None:
        if tokens.numel() == 0 or tokens.shape[1] < 2:
            raise UserError(
                "block search needs calibration tokens; run `prunectl calibrate` first"
            )

    def score(self, run, model, tokens, stats) -> dict[str, torch.Tensor]:
        """Step 1 of the search: single-removal perplexity of every candidate, canonical order."""
        self._require_tokens(tokens)
        _, names, params, settings = self._setup(run, model)
        result = block_search(model, tokens, names, Target(), params, settings, max_steps=1,
                              progress=run.ui.progress)
        first = result.decisions[0]
        return {
            "perplexity": torch.tensor([first["scores"][n]["ppl"] for n in names],
                                       dtype=torch.float64),
            "lower_bound": torch.tensor([first["scores"][n]["lower_bound"] for n in names]),
            "removed": torch.tensor([names.index(first["removed"])]),
            "dense_perplexity": torch.tensor([first["dense_perplexity"]], dtype=torch.float64),
            "seconds": torch.tensor([first["seconds"]], dtype=torch.float64),
        }

    def search(self, run, model, tokens, scores) -> Plan:
        from prunectl.io import append_jsonl, read_jsonl

        self._require_tokens(tokens)
        adapter, names, params, settings = self._setup(run, model)
        target = resolve_target(run.recipe.target, model, names, params, "block")
        progress_file = run.project.path("search", "progress.jsonl")
        group = distributed.current()
        # rank 0 reads and alone appends; the others take its records, so no rank sees a torn file
        previous = read_jsonl(progress_file) if group.is_main and progress_file.exists() else []
        previous = group.broadcast_object(previous)
        if not previous:
            first = first_decision(scores, names, params)
            if first is not None:
                if group.is_main:
                    append_jsonl(progress_file, first)
                previous = [first]

        def record(decision: dict) -> None:
            if group.is_main:
                append_jsonl(progress_file, decision)

        result = block_search(
            model, tokens, names, target, params, settings,
            previous=previous, on_decision=record, progress=run.ui.progress,
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
        "params_removed": count,
        "params_ratio": count / params.total,
        "params_ratio_non_embedding": count / params.non_embedding,
        "scores": {n: {"ppl": float(ppl[i]), "lower_bound": bool(flags[i])}
                   for i, n in enumerate(names)},
        "seconds": float(scores["seconds"][0]),
        "dense_perplexity": float(scores["dense_perplexity"][0]),
    }
