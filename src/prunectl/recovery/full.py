"""``recover.mode: full``: fine-tune every weight the pruned model kept, instead of LoRA adapters.

The Trainer checkpoints and resumes the whole model (weights, optimizer, scheduler); the result
is the trained model itself, saved by rank 0 in the pruned model format (there is no adapter to
merge).  FSDP and DeepSpeed are refused for this mode when the recipe loads: they would shard the
weights that rank 0 saves.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def full_model(model: nn.Module) -> nn.Module:
    """The model with every parameter trainable and the generation cache off."""
    model.config.use_cache = False
    return model.requires_grad_(True)


def save_trained(trainer, tokenizer, directory: Path, dtype: torch.dtype, is_main: bool) -> None:
    """Rank 0 saves the trained model (the best checkpoint when one was selected)."""
    from prunectl.formats.hf import save_model

    if is_main:
        save_model(trainer.model, tokenizer, directory, dtype)
