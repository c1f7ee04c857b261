"""The explicit run context handed to every step (methods get ``Inputs`` instead): no globals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from prunectl.distributed import Distributed
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.project.state import Project
    from prunectl.recipe.sections import Recipe


@dataclass
class RunContext:
    """What one invocation works on: project, resolved recipe, device, dtype and output."""

    project: Project
    recipe: Recipe
    device: torch.device
    dtype: torch.dtype
    ui: UI = SILENT
    force: bool = False
    #: models loaded in this process, by role ("dense", "pruned", ...), so `run` loads each once
    models: dict[str, Any] = field(default_factory=dict)
    #: this process's rank under torchrun; only rank 0 writes project files
    dist: Distributed = field(default_factory=Distributed)
