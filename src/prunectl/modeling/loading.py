"""Loading models: a hub id, a local Hugging Face directory, a ``.gguf`` file, or a model prunectl saved.

The architecture is checked from the config before any weight is read, so an unsupported model is
refused in a second rather than after a multi-gigabyte load.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunectl.errors import UserError
from prunectl.modeling import gguf_cache
from prunectl.modeling.adapters import family_for

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else must name a device this machine has."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"device '{spec}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' was asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device '{spec}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{spec}' is not available here; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device '{spec}' is not supported; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere (CPU half precision is slow and lossy)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise UserError(f"dtype '{spec}' is not supported; use auto, bfloat16, float16 or float32")
    return DTYPES[spec]


def _source(cfg: Any) -> tuple[str, str | None]:
    """(what to pass to ``from_pretrained``, gguf file name or None), with clear errors for bad paths."""
    path = str(cfg.path)
    gguf_file = getattr(cfg, "gguf_file", None)
    local = Path(path).expanduser()
    if path.endswith(".gguf"):
        if not local.is_file():
            raise UserError(f"model.path '{path}' does not exist; give an existing .gguf file")
        return str(local.parent), local.name
    if local.exists():
        if not local.is_dir():
            raise UserError(
                f"model.path '{path}' is a file but not a .gguf; give a model directory, a hub id or a .gguf file"
            )
        if gguf_file is not None and not (local / gguf_file).is_file():
            raise UserError(f"model.gguf_file '{gguf_file}' is not in {local}; check the file name")
        if gguf_file is None and not (local / "config.json").is_file():
            raise UserError(
                f"model.path '{path}' has no config.json; give a Hugging Face model directory or a .gguf file"
            )
        return str(local), gguf_file
    if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1:
        raise UserError(f"model.path '{path}' does not exist; give a model directory, hub id or .gguf file")
    return path, gguf_file  # a hub id


def _is_pruned_directory(source: str) -> bool:
    """A directory in prunectl's pruned format (its config needs our config class)."""
    config_file = Path(source) / "config.json"
    return config_file.is_file() and "per_layer_config" in json.loads(config_file.read_text())


def _load_config(source: str, gguf_file: str | None, cfg: Any):
    from transformers import AutoConfig

    try:
        if gguf_file is None and _is_pruned_directory(source):
            from prunectl.modeling.modeling_prunectl import pruned_config_class_for

            model_type = json.loads((Path(source) / "config.json").read_text()).get("model_type", "?")
            family_for(model_type)
            return pruned_config_class_for(model_type).from_pretrained(source)
        if gguf_file is not None:
            cached = gguf_cache.find(Path(source) / gguf_file)
            if cached is not None:
                return AutoConfig.from_pretrained(cached)
            return copy.deepcopy(_read_gguf_config(source, gguf_file))
        return AutoConfig.from_pretrained(
            source,
            revision=getattr(cfg, "revision", None),
            trust_remote_code=bool(getattr(cfg, "trust_remote_code", False)),
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"could not read the model config of '{cfg.path}' ({first}); check model.path") from None


def _read_gguf_config(source: str, gguf_file: str):
    """The GGUF file's config; a file the GGUF reader cannot parse to its end (a download cut
    short: ``struct.error``, a ``ValueError`` on a short tensor...) is named as such."""
    try:
        return _gguf_config(source, gguf_file)
    except Exception as error:  # the reader fails with whatever the cut-off point gives
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        file = Path(source) / gguf_file
        raise UserError(
            f"{file} is not a complete GGUF file ({first}); download it again"
        ) from None


@functools.lru_cache(maxsize=4)
def _gguf_config(source: str, gguf_file: str):
    """A GGUF file's config, read once per process: transformers parses the whole metadata
    (the vocabulary included) for it, tens of seconds on a small CPU."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, gguf_file=gguf_file)


def load_config(cfg: Any):
    """The model's config alone (no weights), refusing unsupported architectures: the cheap
    check a command makes before it pins a new recipe or computes anything."""
    config = _load_config(*_source(cfg), cfg)
    family_for(getattr(config, "model_type", "?"))
    return config


def check_weight_files(cfg: Any) -> None:
    """Refuse a local model whose safetensors files are cut short or are not safetensors at all,
    from their headers alone (no weight is read): the check made before a new recipe is pinned,
    so a broken model changes nothing in the project."""
    source, gguf_file = _source(cfg)
    if gguf_file is not None or not Path(source).is_dir():
        return  # a GGUF file is parsed whole by load_config; a hub id is the hub's
    for file in sorted(Path(source).glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            raise UserError(f"{file} {problem}; copy the model again (model.path)")


def check_weight_shapes(cfg: Any, model: nn.Module) -> None:
    """Refuse a local model whose config describes other shapes than its safetensors hold
    (``model`` is the config's model on the meta device), from the headers alone."""
    source, gguf_file = _source(cfg)
    if gguf_file is not None or not Path(source).is_dir() or \
            getattr(model.config, "quantization_config", None):  # packed weights: other shapes
        return
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for file in sorted(Path(source).glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, tensor in header.items():
            want = expected.get(name)
            if name != "__metadata__" and want is not None and tensor["shape"] != want:
                raise UserError(f"{file}: {name} has shape {tensor['shape']} but {source}/"
                                f"config.json describes {want}; the config does not belong to "
                                "these weights (fix config.json or model.path)")


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's framing: an 8-byte header length, a JSON header,
    and data that ends exactly where the header's offsets say."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            return "is not a safetensors file (no valid header)"
        try:
            header = json.loads(handle.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return "is not a safetensors file (its header is not valid)"
    if 8 + length + end != size:
        return f"is truncated or damaged ({size} bytes, its header describes {8 + length + end})"
    return None


def load_model(cfg: Any, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The recipe's model (eval mode, on ``device`` in ``dtype``) and its tokenizer.

    ``cfg`` is the recipe's ``model`` section (``path``, optional ``gguf_file``, ``revision``,
    ``trust_remote_code``).  A GGUF checkpoint is dequantized by transformers; its gguf
    ``quantization_config`` is dropped so the model saves as a plain checkpoint, and the result
    is cached (``gguf_cache``) for the next step.
    """
    source, gguf_file = _source(cfg)
    config = _load_config(source, gguf_file, cfg)
    family_for(getattr(config, "model_type", "?"))  # refuse before reading any weight
    device_map = getattr(cfg, "device_map", None)
    placement = {"device_map": device_map} if device_map is not None else {}
    loaded = None
    if gguf_file is not None:
        loaded = _load_cached_gguf(Path(source) / gguf_file, dtype, placement)
    if loaded is None:
        loaded = _load_source(cfg, source, gguf_file, device, dtype, placement)
        if gguf_file is not None:
            gguf_cache.store(*loaded, Path(source) / gguf_file, dtype)
    model, tokenizer = loaded
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "hf_device_map", None) is None:  # accelerate placed a device-mapped model
        model = model.to(device)
    return model.eval(), tokenizer  # .to(dtype) would also cast fp32 rotary buffers


def _load_source(cfg: Any, source: str, gguf_file: str | None, device: torch.device,
                 dtype: torch.dtype, placement: dict) -> tuple[nn.Module, Any]:
    """Model and tokenizer from the recipe's source itself (hub id, directory or GGUF file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {
        "gguf_file": gguf_file,
        "revision": getattr(cfg, "revision", None),
        "trust_remote_code": bool(getattr(cfg, "trust_remote_code", False)),
    }
    try:
        if gguf_file is None and _is_pruned_directory(source):  # e.g. pruning a pruned model again
            model = load_project_model(Path(source), device, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **common, **placement)
    except _unreadable() as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"could not load the weights of '{cfg.path}' ({first}); check model.path "
                        "(a truncated or damaged weights file: copy it again)") from None
    if gguf_file is not None:
        model = _without_quantization_config(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"'{cfg.path}' has no usable tokenizer ({first}); add the tokenizer files") from None
    return model, tokenizer


def _load_cached_gguf(file: Path, dtype: torch.dtype, placement: dict) -> tuple[nn.Module, Any] | None:
    """The cached de-quantized copy of ``file``, or None (no copy, or a damaged one: discarded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = gguf_cache.find(file, dtype)
    if cached is None:
        return None
    try:
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, **placement)
        return model, AutoTokenizer.from_pretrained(cached)
    except _unreadable():
        gguf_cache.discard(cached)
        return None


def _without_quantization_config(model: nn.Module) -> nn.Module:
    """A fresh model of the same class and weights whose config no longer says "gguf-quantized".

    ``save_pretrained`` refuses a model loaded from GGUF because of that key; the weights themselves
    are already dequantized, so rebuilding without it loses nothing.
    """
    config = model.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean_config = type(config).from_dict(config_dict)
    clean = rebuild_model(type(model), clean_config, model.state_dict(), model)
    clean.generation_config = model.generation_config
    return clean


def rebuild_model(
    model_cls: type, config: Any, tensors: dict[str, torch.Tensor], reference: nn.Module
) -> nn.Module:
    """An instance of ``model_cls`` built on the meta device and given ``tensors`` (no extra copy).

    Non-persistent buffers (rotary ``inv_freq``) are not in a state dict: they are taken from
    ``reference`` by name, which holds the same ones whenever ``head_dim`` and rope settings agree.
    Tied embeddings are re-tied after assignment.
    """
    config._attn_implementation = reference.config._attn_implementation
    with torch.device("meta"):
        model = model_cls(config)
    if getattr(config, "tie_word_embeddings", False):
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"tensors not in {model_cls.__name__}: {unexpected[:5]}")
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            owner._buffers[attr] = reference_buffers[name]
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.get_input_embeddings().weight
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RuntimeError(f"{model_cls.__name__} left without weights: {still_meta[:5]}")
    model.generation_config = reference.generation_config
    return model.eval()


def project_config(directory: Path) -> dict:
    """``config.json`` of a model directory prunectl wrote, or a clear error."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise UserError(f"{directory} holds no model (config.json missing); re-run the step that wrote it")
    return json.loads(config_file.read_text())


def load_project_model(directory: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A model prunectl saved (plain or pruned format), without asking for ``trust_remote_code``:
    the pruned classes are imported from this package, not from the copy in the directory."""
    from transformers import AutoModelForCausalLM

    config = project_config(directory)
    family_for(config.get("model_type", "?"))
    if "per_layer_config" in config:
        from prunectl.modeling.modeling_prunectl import pruned_class_for

        model_cls = pruned_class_for(config["model_type"])
    else:
        model_cls = AutoModelForCausalLM
    try:
        model = model_cls.from_pretrained(directory, dtype=dtype)
    except _unreadable() as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"could not load the model in {directory} ({first}); delete that "
                        "directory and re-run the step that wrote it") from None
    return model.to(device).eval()


def _unreadable() -> tuple[type[BaseException], ...]:
    """What loading a damaged weights file raises: the user's to fix, not an internal error."""
    from safetensors import SafetensorError

    return OSError, ValueError, SafetensorError


def load_project_tokenizer(directory: Path):
    """The tokenizer saved with a project model.  ``AutoTokenizer`` would read the pruned
    format's ``config.json`` and refuse its per-layer attributes, so a stock config of the same
    model type is handed over; the tokenizer files alone decide the result."""
    from transformers import AutoConfig, AutoTokenizer

    model_type = project_config(directory)["model_type"]
    tokenizer = AutoTokenizer.from_pretrained(directory, config=AutoConfig.for_model(model_type))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
