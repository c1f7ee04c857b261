"""Saving pruned models as Hugging Face directories that load with ``transformers`` alone.

A uniform result is a plain checkpoint of its family.  A non-uniform one keeps its ``model_type``,
carries ``per_layer_config`` (the heterogeneous-config format) and an ``auto_map`` entry pointing at
``modeling_prunectl.py``, which is copied next to the weights, so
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it today.

Directories are written whole or not at all: into ``<dir>.tmp-XXXX`` first, then renamed over the
old one, so a crash never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunectl.io import write_directory
from prunectl.modeling import modeling_prunectl

MODELING_FILE = Path(modeling_prunectl.__file__)


def is_pruned_format(model: nn.Module) -> bool:
    """True when the model needs the shipped modeling code (its class is one of ours)."""
    return type(model).__module__ == modeling_prunectl.__name__ or type(model).__name__ in {
        cls.__name__ for cls in modeling_prunectl.PRUNED_CLASSES.values()
    }


def _state_dict_in(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict cast to ``dtype``; tensors shared before (tied embeddings) stay shared."""
    cast: dict[int, torch.Tensor] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key not in cast:
            cast[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        state[name] = cast[key]
    return state


def write_model(model: nn.Module, tokenizer: Any, target: Path, dtype: torch.dtype | None) -> None:
    """The files of a saved model in ``target`` (an empty directory; :func:`save_model` swaps it in)."""
    if is_pruned_format(model):
        auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE.stem}.{type(model).__name__}"}
        if hasattr(modeling_prunectl, type(model.config).__name__):  # PrunedLlamaConfig
            auto_map["AutoConfig"] = f"{MODELING_FILE.stem}.{type(model.config).__name__}"
        model.config.auto_map = auto_map
        shutil.copyfile(MODELING_FILE, target / MODELING_FILE.name)
    state = None if dtype is None or dtype == model.dtype else _state_dict_in(model, dtype)
    model.save_pretrained(target, state_dict=state)
    if state is not None:
        config_file = target / "config.json"
        config = json.loads(config_file.read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(target)


def save_model(model: nn.Module, tokenizer: Any, directory: Path, dtype: torch.dtype | None = None) -> Path:
    """Write weights (safetensors), config, generation config and tokenizer to ``directory``.

    ``dtype`` casts the saved weights only; the in-memory model is left as it is.
    """
    return write_directory(directory, lambda target: write_model(model, tokenizer, target, dtype))
