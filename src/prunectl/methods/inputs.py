"""The method contract's inputs: what a step builds once and hands to a method's hooks.

A hook never sees the run context (recipe, project, CLI flags): it gets the model, the
calibration windows, the resolved :class:`Target`, the UI, a :class:`Journal` for progress the
step keeps on disk, a scratch directory, and the passes over the windows that its pipeline
builds (``layers``, ``units``, ``gradients``: :mod:`prunectl.pipelines.registry`).  Tests and
benches build the same object directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.io import append_jsonl, read_jsonl
from prunectl.pipelines.registry import BY_HAND, Pipeline, pipeline
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.pipelines.blocks.runner import Units
    from prunectl.pipelines.gradients import Gradients
    from prunectl.pipelines.layers import Layers

#: what calibration a method needs, see :mod:`prunectl.pipelines`
Calibration = Literal["none", "tokens", "layer_inputs", "gradients"]
TargetKind = Literal["blocks", "params", "units", "experts", "budget", "none"]

#: how each target kind is asked for, for the error that names what a method takes
_HOW = {"blocks": "target.blocks (--blocks N)",
        "params": "target.params_ratio (--ratio 0.2) or target.params",
        "units": "target.ratio_of: units",
        "experts": "target.experts_ratio",
        "budget": "target.kv_cache_ratio / target.flops_ratio"}


@dataclass(frozen=True)
class Target:
    """The recipe's ``target`` section as plain data, already checked against the method."""

    blocks: int | None = None
    params_ratio: float | None = None
    ratio_of: str = "total"
    params: int | None = None
    experts_ratio: float | None = None
    kv_cache_ratio: float | None = None  # share of the KV cache per token removed
    flops_ratio: float | None = None  # share of the forward FLOPs per token removed

    @classmethod
    def of(cls, config: Any) -> Target:
        """From the recipe's ``TargetConfig`` (or anything with its attributes)."""
        return cls(**{k: getattr(config, k, cls.__dataclass_fields__[k].default)
                      for k in cls.__dataclass_fields__})

    @property
    def kind(self) -> TargetKind:
        """``blocks``, ``params``, ``units``, ``experts``, ``budget`` (a KV-cache or FLOPs share,
        with or without a parameter one) or ``none``: what the target asks for."""
        if self.blocks is not None:
            return "blocks"
        if self.kv_cache_ratio is not None or self.flops_ratio is not None:
            return "budget"
        if self.experts_ratio is not None:
            return "experts"
        if self.params_ratio is not None and self.ratio_of == "units":
            return "units"
        if self.params_ratio is not None or self.params is not None:
            return "params"
        return "none"

    def check(self, method: Any) -> Target:
        """Refuse a kind ``method.targets`` does not list (``none`` passes: a method may carry
        its own amount, e.g. ``magnitude``'s ``pruning_ratio``)."""
        if self.kind != "none" and self.kind not in method.targets:
            takes = " or ".join(_HOW[k] for k in sorted(method.targets))
            raise UserError(f"method {method.name} cannot meet {_HOW[self.kind]}; give {takes}")
        return self


@dataclass(frozen=True)
class Journal:
    """Files a step keeps so that a killed run resumes: ``directory`` (None: nothing is kept)
    and ``key``, what the inputs were, so a method can ignore progress made for others.  Under
    ``torchrun`` rank 0 alone reads and writes; the other ranks get its records."""

    directory: Path | None = None
    key: str = ""

    def records(self, name: str = "progress.jsonl") -> list[dict]:
        group = distributed.current()
        file = None if self.directory is None else self.directory / name
        found = read_jsonl(file) if group.is_main and file is not None and file.exists() else []
        return group.broadcast_object(found)

    def append(self, record: dict, name: str = "progress.jsonl") -> None:
        if self.directory is not None and distributed.current().is_main:
            append_jsonl(self.directory / name, record)


@dataclass(frozen=True)
class Inputs:
    """Everything a hook reads.  ``tokens`` are the calibration windows ([n, seqlen] int64, on
    the execution device; empty for ``calibration: none``); ``batch_size`` is the recipe's
    ``calibration.batch_size``; ``scratch`` a directory for large temporary files (None: keep
    them in memory); ``calibration`` the method's kind, which decides the passes it gets (None,
    inputs built by hand in tests and benches: every pass)."""

    model: nn.Module
    tokens: torch.Tensor = torch.empty(0, 0, dtype=torch.long)
    batch_size: int = 1
    target: Target = Target()
    ui: UI = SILENT
    journal: Journal = Journal()
    scratch: Path | None = None
    calibration: Calibration | None = None

    @functools.cached_property
    def adapter(self):
        from prunectl.modeling.adapters import Adapter

        return Adapter(self.model)

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline of ``calibration``, which builds the passes below."""
        return BY_HAND if self.calibration is None else pipeline(self.calibration)

    @property
    def layers(self) -> Layers:
        """The layer pass over ``tokens`` in batches of ``batch_size``."""
        return self.pipeline.layers(self.adapter, self.tokens, self.batch_size)

    @property
    def units(self) -> Units:
        """The block-unit runner on ``tokens`` in batches of ``batch_size``."""
        return self.pipeline.units(self.model, self.tokens, self.batch_size)

    @property
    def gradients(self) -> Gradients:
        """The gradient pass over ``tokens``."""
        return self.pipeline.gradients(self.model, self.tokens)

    @property
    def device(self) -> torch.device:
        from prunectl.modeling.placement import execution_device

        return execution_device(self.model)

    def require_tokens(self, who: str, min_length: int = 1) -> torch.Tensor:
        """The calibration windows, or a user error when ``calibrate`` has not made them."""
        if self.tokens.numel() == 0 or self.tokens.shape[1] < min_length:
            raise UserError(f"{who} needs calibration tokens; run `prunectl calibrate` first")
        return self.tokens
