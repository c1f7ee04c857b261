"""How ``recover`` trains across the processes of a launcher: DDP, FSDP or DeepSpeed.

The transformers Trainer does the distributed work; this module only decides what it is asked
for and refuses, before anything is written, what cannot run.  Plain data parallelism needs no
recipe key: ``torchrun --nproc_per_node N`` (or ``accelerate launch``) is enough.  FSDP and
DeepSpeed are named in ``recover.distributed`` (a config file or an inline mapping, pinned with
the recipe) or come from ``accelerate launch --config_file``, which passes them to the Trainer
through ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED`` and the ``FSDP_*`` variables.

The global batch stays ``recover.batch_size`` whatever the number of processes W: each process
accumulates ``batch_size // (micro_batch_size * W)`` micro-batches per optimizer step (LLM-Pruner
divides its accumulation by the world size the same way).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from prunectl.errors import UserError

#: ``fsdp_config`` keys transformers 5 reads (``TrainingArguments._process_fsdp_args``), without
#: the optional ``fsdp_`` prefix; anything else would be ignored silently, so it is refused
FSDP_KEYS = (
    "version", "reshard_after_forward", "cpu_offload", "activation_checkpointing",
    "cpu_ram_efficient_loading", "state_dict_type", "auto_wrap_policy",
    "transformer_layer_cls_to_wrap", "min_num_params", "forward_prefetch", "backward_prefetch",
    "use_orig_params", "sync_module_states", "limit_all_gathers",
)
#: accelerate-config spellings with another name in ``fsdp_config``
FSDP_RENAMED = {"offload_params": "cpu_offload", "sharding_strategy": "reshard_after_forward"}


def read_config(value: Any, base: Path) -> dict[str, Any] | None:
    """An inline mapping as given, or the mapping in a JSON/YAML file (relative to ``base``).

    Raises ValueError with the words a recipe error shows after the key.
    """
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"got {value!r}, expected a JSON/YAML file name or a mapping")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ValueError(f"file {path} does not exist; give a path relative to the recipe file "
                         "or an inline mapping")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path} is not valid JSON/YAML{where}; fix the file") from None
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
            f"{path} holds {type(data).__name__}, expected a mapping of options")
    return data


def fsdp_options(config: dict[str, Any]) -> dict[str, Any]:
    """``fsdp_config`` for the Trainer: prefixes dropped, every key one transformers reads, and a
    full state dict (the adapter is gathered to rank 0 to be saved and merged)."""
    import difflib

    options = {k.removeprefix("fsdp_"): v for k, v in config.items()}
    for key in options:
        if key in FSDP_RENAMED:
            raise ValueError(f"'{key}' is an accelerate-config option; the Trainer's fsdp_config "
                             f"uses '{FSDP_RENAMED[key]}' instead")
        if key not in FSDP_KEYS:
            close = difflib.get_close_matches(key, FSDP_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown FSDP option '{key}'{hint}; allowed: {', '.join(FSDP_KEYS)}")
    if "SHARDED" in str(options.get("state_dict_type", "FULL_STATE_DICT")).upper():
        raise ValueError("state_dict_type SHARDED_STATE_DICT saves no adapter recover can merge; "
                         "use FULL_STATE_DICT (the default)")
    return options


def deepspeed_batch_problem(config: dict[str, Any], batch: int, micro: int) -> str | None:
    """A DeepSpeed batch value that contradicts the recipe's (``auto`` is always fine)."""
    for key, wanted, recipe_key in (("train_batch_size", batch, "batch_size"),
                                    ("train_micro_batch_size_per_gpu", micro, "micro_batch_size")):
        given = config.get(key, "auto")
        if given != "auto" and given != wanted:
            return (f"{key}={given} contradicts recover.{recipe_key}={wanted}; set it to \"auto\" "
                    "or to the recipe's value")
    return None


def accumulation(cfg, world_size: int) -> int:
    """Micro-batches each process accumulates per optimizer step, so the global batch is
    ``batch_size`` (checked divisible by :func:`check`)."""
    return max(1, cfg.batch_size // (cfg.micro_batch_size * world_size))


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def strategy(cfg, env: Mapping[str, str]) -> tuple[str, str]:
    """(``ddp``, ``fsdp`` or ``deepspeed``; where it was asked for) from the recipe or from
    ``accelerate launch``; refuses a launcher config that contradicts the recipe."""
    recipe = "fsdp" if cfg.distributed.fsdp is not None else (
        "deepspeed" if cfg.distributed.deepspeed is not None else None)
    launcher = "fsdp" if _flag(env, "ACCELERATE_USE_FSDP") else (
        "deepspeed" if _flag(env, "ACCELERATE_USE_DEEPSPEED") else None)
    if recipe and launcher and recipe != launcher:
        raise UserError(f"recover.distributed.{recipe} is set but accelerate launch asks for "
                        f"{launcher}; drop one of them (use a plain multi-GPU accelerate config)")
    if recipe:
        return recipe, f"recover.distributed.{recipe}"
    if launcher == "fsdp":
        version = env.get("FSDP_VERSION", "1")
        kind = env.get("FSDP_STATE_DICT_TYPE",
                       "FULL_STATE_DICT" if version == "1" else "SHARDED_STATE_DICT")
        if "SHARDED" in kind.upper():
            raise UserError("accelerate launch asks for FSDP with a sharded state dict, which "
                            "saves no adapter recover can merge; set fsdp_state_dict_type: "
                            "FULL_STATE_DICT in the accelerate config")
    return (launcher, "accelerate launch's config") if launcher else ("ddp", "")


def check(cfg, device, world_size: int, env: Mapping[str, str] | None = None) -> str:
    """Refuse, before anything is written, a setup the Trainer cannot run; returns the strategy.

    ``device`` is the run's device; ``world_size`` the number of processes of the launcher.
    """
    env = os.environ if env is None else env
    name, source = strategy(cfg, env)
    step = cfg.micro_batch_size * world_size
    if cfg.batch_size % step:
        raise UserError(
            f"recover.batch_size={cfg.batch_size} is not a multiple of micro_batch_size x "
            f"processes ({cfg.micro_batch_size} x {world_size} = {step}), so the global batch "
            f"cannot be {cfg.batch_size}; set batch_size to a multiple of {step} or lower "
            "micro_batch_size")
    if name == "ddp":
        return name
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"{source} asks for DeepSpeed, which is not installed; "
                        "pip install deepspeed (on the GPU machines), or use fsdp instead")
    if "LOCAL_RANK" not in env:
        raise UserError(f"{source} asks for {name}, which needs a launcher; run under "
                        "torchrun --nproc_per_node N (or accelerate launch)")
    if device.type != "cuda":
        raise UserError(f"{source} asks for {name}, which the Trainer runs on CUDA GPUs only "
                        f"(on {device.type} accelerate falls back to plain DDP); drop it here, "
                        "or run recover on GPUs")
    return name


def trainer_options(cfg) -> dict[str, Any]:
    """The TrainingArguments for the recipe's strategy (DDP needs only the launcher).

    Every LoRA weight gets a gradient, so DDP need not look for unused parameters (DDP raises
    an error, not a wrong result, if one ever does not).
    """
    options: dict[str, Any] = {"ddp_find_unused_parameters": False}
    if cfg.distributed.fsdp is not None:
        options.update(fsdp=True, fsdp_config=dict(cfg.distributed.fsdp))
    if cfg.distributed.deepspeed is not None:
        options["deepspeed"] = dict(cfg.distributed.deepspeed)
    return options
