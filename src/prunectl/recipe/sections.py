"""The recipe's sections: the schema every recipe is validated against.

Every section forbids unknown keys (:class:`~prunectl.schema.StrictSection`); the ``method``
section is validated by the named method's own ``Config``.  Reading, merging and resolving the
YAML before validation is :mod:`prunectl.recipe.load`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from prunectl.methods.base import MethodConfig
from prunectl.methods.registry import METHODS, canonical_name, parse_method_config
from prunectl.schema import Seed, StrictSection


class Section(StrictSection):
    """A recipe section: unknown keys and booleans given for numbers are errors."""


class ModelConfig(Section):
    #: hub id, local Hugging Face directory, or a .gguf file
    path: str
    #: a local config.json (or its folder) standing in for the model's own when checking a
    #: recipe (``prunectl validate``): a 70B recipe checks on a laptop, offline
    config: str | None = None
    #: the .gguf file inside ``path`` when ``path`` is a directory or hub id
    gguf_file: str | None = None
    #: auto = bfloat16 on CUDA, float32 on CPU
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    #: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    #: spread one model over several devices (layer-wise execution, later)
    device_map: None | Literal["auto", "balanced", "sequential"] | dict[str, Any] = None

    @model_serializer(mode="wrap")
    def _without_unset_config(self, handler: Any) -> dict[str, Any]:
        """Leave ``config`` out when unset, so recipes pinned before it existed stay equal."""
        data = handler(self)
        if data.get("config") is None:
            data.pop("config", None)
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"got {value!r}, expected auto, cpu, cuda, cuda:N or mps")
        return value


class CalibrationConfig(Section):
    #: wikitext2 | c4 | ptb | alpaca | bookcorpus | pg19, or a local .txt/.jsonl/.json/.parquet
    #: file or directory
    dataset: str = "wikitext2"
    #: dataset split (default: the dataset's own training split)
    split: str | None = None
    nsamples: int = Field(128, gt=0)
    seqlen: int = Field(2048, gt=0)
    seed: Seed = 42
    batch_size: int = Field(8, gt=0)
    #: how windows are drawn: auto (the named dataset's own convention; stream for a local
    #: file), or stream | documents | distinct | rows, e.g. a local PG-19 copy as ShortGPT
    style: Literal["auto", "stream", "documents", "distinct", "rows"] = "auto"


class TargetConfig(Section):
    """How much to remove: a number of blocks, a fraction of the parameters, or a parameter
    count (one of them).  ``ratio_of`` names what ``params_ratio`` is a fraction of, so a
    paper's ratio gives the paper's size (see ``methods/target.py``)."""

    blocks: int | None = Field(None, gt=0)
    params_ratio: float | None = Field(None, gt=0, lt=1)
    #: total (all parameters) | non_embedding | layers (attention + MLP weights of the decoder
    #: layers: FLAP's ratio) | units (share of heads and channels in the pruned layers:
    #: LLM-Pruner's pruning_ratio)
    ratio_of: Literal["total", "non_embedding", "layers", "units"] = "total"
    #: parameters to remove, an absolute count
    params: int | None = Field(None, gt=0)
    #: share of the routed experts removed from every MoE layer (``method: reap``)
    experts_ratio: float | None = Field(None, gt=0, lt=1)
    #: share of the KV cache per token removed (``method: puzzle``; with params_ratio or alone)
    kv_cache_ratio: float | None = Field(None, gt=0, lt=1)
    #: share of the forward FLOPs per token removed (``method: puzzle``; likewise)
    flops_ratio: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_target(self) -> TargetConfig:
        given = {k: v for k in ("blocks", "params_ratio", "params")
                 if (v := getattr(self, k)) is not None}
        if len(given) > 1:
            got = " and ".join(f"{k}={v}" for k, v in given.items())
            raise ValueError(f"got {got}, expected at most one of them")
        if self.ratio_of != "total" and self.params_ratio is None:
            raise ValueError(
                f"got ratio_of={self.ratio_of} without params_ratio, expected params_ratio "
                "with it (ratio_of says what the ratio is a fraction of)"
            )
        if self.experts_ratio is not None and given:
            raise ValueError(
                f"got experts_ratio={self.experts_ratio} and another target, expected one of them"
            )
        budgets = {k: v for k in ("kv_cache_ratio", "flops_ratio")
                   if (v := getattr(self, k)) is not None}
        if budgets and (self.blocks is not None or self.experts_ratio is not None):
            got = " and ".join(f"{k}={v}" for k, v in budgets.items())
            raise ValueError(f"got {got} with blocks or experts_ratio, expected them alone or "
                             "with params_ratio / params")
        return self


class RecoverDistributedConfig(Section):
    """FSDP or DeepSpeed for ``recover`` under a launcher (torchrun, accelerate launch); plain
    data parallelism needs neither.  Each is a JSON/YAML file (relative to the recipe file that
    names it) or an inline mapping; a file is read when the recipe loads, so the project pins
    the options themselves.  ``fsdp`` holds the Trainer's ``fsdp_config`` options, ``deepspeed``
    a DeepSpeed config (``"auto"`` values are filled from the recipe)."""

    fsdp: dict[str, Any] | None = None
    deepspeed: dict[str, Any] | None = None

    @field_validator("fsdp", "deepspeed", mode="before")
    @classmethod
    def _read(cls, value: Any, info: ValidationInfo) -> Any:
        from prunectl.recovery.parallel import fsdp_options, read_config

        origin = ((info.context or {}).get("origins") or {}).get(
            ("recover", "distributed", info.field_name), "")
        base = Path(origin).parent if origin and Path(origin).is_file() else Path.cwd()
        config = read_config(value, base)
        return fsdp_options(config) if info.field_name == "fsdp" and config is not None else config

    @model_validator(mode="after")
    def _one(self) -> RecoverDistributedConfig:
        if self.fsdp is not None and self.deepspeed is not None:
            raise ValueError("got both fsdp and deepspeed, expected at most one of them")
        return self


class DistillConfig(Section):
    """Knowledge distillation from the dense model (``recover.objective: kd | kd+lm``); see
    :mod:`prunectl.recovery.distill` for the loss and the cache."""

    temperature: float = Field(1.0, gt=0)
    #: weight of the KD term in ``kd+lm`` (the LM term gets 1 - weight)
    weight: float = Field(0.5, gt=0, lt=1)
    #: cache the teacher's top-k logits per position in the project instead of running it live
    cache_topk: int | None = Field(None, gt=0)


class RecoverConfig(Section):
    """LoRA recovery fine-tuning; defaults follow LLM-Pruner's post-training script.

    ``batch_size`` is the global batch of one optimizer step, whatever the number of processes.
    """

    dataset: str = "yahma/alpaca-cleaned"
    format: Literal["alpaca", "text"] = "alpaca"
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    cutoff_len: int = Field(256, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    num_epochs: float = Field(2, gt=0)
    batch_size: int = Field(64, gt=0)
    micro_batch_size: int = Field(4, gt=0)
    max_steps: int | None = Field(None, gt=0)
    val_set_size: int = Field(2000, ge=0)
    save_steps: int = Field(100, gt=0)
    seed: Seed = 42
    gradient_checkpointing: bool = False
    max_samples: int | None = Field(None, gt=0)
    distributed: RecoverDistributedConfig = Field(default_factory=RecoverDistributedConfig)
    #: lm: next-token loss; kd: distillation from the dense model; kd+lm: both, mixed
    objective: Literal["lm", "kd", "kd+lm"] = "lm"
    #: lora: train adapters and merge them; full: train every weight the pruned model kept
    mode: Literal["lora", "full"] = "lora"
    kd: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _distill(self) -> RecoverConfig:
        if self.objective == "lm" and self.kd != DistillConfig():
            raise ValueError("got kd options with objective lm, expected objective kd or kd+lm")
        if self.objective == "kd" and self.kd.weight != DistillConfig().weight:
            raise ValueError("got kd.weight with objective kd, expected objective kd+lm "
                             "(kd.weight mixes the KD and LM losses)")
        if self.mode == "full" and self.distributed != RecoverDistributedConfig():
            raise ValueError("got mode full with distributed fsdp/deepspeed, expected mode lora "
                             "(full fine-tuning saves the model from one process, plain DDP only)")
        return self

    @model_validator(mode="after")
    def _batches(self) -> RecoverConfig:
        from prunectl.recovery.parallel import deepspeed_batch_problem

        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"got batch_size={self.batch_size}, micro_batch_size={self.micro_batch_size}, "
                "expected batch_size a multiple of micro_batch_size"
            )
        fsdp, deepspeed = self.distributed.fsdp, self.distributed.deepspeed
        if fsdp and self.gradient_checkpointing and fsdp.get("activation_checkpointing"):
            raise ValueError("got gradient_checkpointing and distributed.fsdp."
                             "activation_checkpointing, expected one of them (FSDP's under FSDP)")
        problem = deepspeed and deepspeed_batch_problem(
            deepspeed, self.batch_size, self.micro_batch_size)
        if problem:
            raise ValueError(f"distributed.deepspeed: {problem}")
        return self


class PerplexityConfig(Section):
    #: ``[]`` measures no perplexity (tasks or speed only); a recipe without ``eval:`` pins it so
    datasets: list[str] = Field(default_factory=lambda: ["wikitext2"])
    split: str | None = None
    seqlen: int = Field(2048, gt=0)
    batch_size: int = Field(4, gt=0)
    max_windows: int | None = Field(None, gt=0)
    add_bos: bool = False


GgufOuttype = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k",
                      "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s",
                      "q2_k"]


class LlamaCppEvalConfig(Section):
    """Each model exported as GGUF at these types and measured in llama.cpp (node-llama-cpp's
    engine, ``PRUNECTL_NODE_LLAMA_CPP``): perplexity on ``eval.perplexity``'s windows, speed,
    bytes (docs/notes/evaluation.md)."""

    #: GGUF types to measure (empty: llama.cpp is not used)
    outtypes: list[GgufOuttype] = Field(default_factory=list)
    speed: bool = True
    #: prompt tokens evaluated in one batch, then tokens decoded one at a time
    prompt: int = Field(128, gt=0)
    gen: int = Field(32, gt=0)
    #: interleaved rounds (after one warm-up run per file)
    repeats: int = Field(3, gt=0)
    threads: int = Field(1, gt=0)


class EvalConfig(Section):
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig)
    #: lm-eval task names; the papers' list is piqa, hellaswag, winogrande, arc_easy,
    #: arc_challenge, boolq, openbookqa (empty by default so offline runs work)
    tasks: list[str] = Field(default_factory=list)
    #: extra lm-eval task directories (YAML task definitions)
    task_paths: list[str] = Field(default_factory=list)
    num_fewshot: int = Field(0, ge=0)
    limit: int | float | None = Field(None, gt=0)
    task_batch_size: int | str = 1
    speed: bool = False
    llama_cpp: LlamaCppEvalConfig = Field(default_factory=LlamaCppEvalConfig)
    #: which models to evaluate (those that exist)
    models: list[Literal["dense", "pruned", "recovered"]] = Field(
        default_factory=lambda: ["dense", "pruned", "recovered"]
    )


class NewKeysSection(Section):
    """A section with keys added after projects were pinned: each is left out of the dump while
    null, so an older project's pin (and the steps fingerprinted on it) stays unchanged."""

    new_keys: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_null_new_keys(self, handler):
        data = handler(self)
        for key in self.new_keys:
            if isinstance(data, dict) and data.get(key) is None:
                data.pop(key, None)
        return data


class ExportConfig(NewKeysSection):
    new_keys = ("formats",)
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"
    #: auto = the recovered model when it exists, else the pruned one
    source: Literal["auto", "pruned", "recovered"] = "auto"
    #: the model card's base_model (a hub id); default: model.path when it is a hub id, else
    #: what a GGUF file's metadata names
    base_model: str | None = None
    #: hf = a Hugging Face directory; gguf = one llama.cpp file (see docs/notes/gguf.md)
    format: Literal["hf", "gguf"] = "hf"
    #: several formats side by side: the first in ``export/``, each other in ``export-<format>/``
    #: (replaces ``format``)
    formats: list[Literal["hf", "gguf"]] | None = Field(None, min_length=1)
    #: GGUF tensor type (gguf only; default: export.dtype's, else f16 as llama.cpp's converter); the
    #: K-quants (q*_k*) run llama.cpp's quantizer (docs/notes/gguf.md)
    outtype: GgufOuttype | None = None

    @field_validator("base_model")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
            raise ValueError(f"got {value!r}, expected a hub id such as meta-llama/Llama-2-7b-hf")
        return value

    @model_validator(mode="after")
    def _format_options(self) -> ExportConfig:
        if self.formats is not None:
            if len(set(self.formats)) != len(self.formats):
                raise ValueError(f"got formats={self.formats}, expected each format once")
            if "format" in self.model_fields_set and self.format not in self.formats:
                raise ValueError(f"got format={self.format} and formats={self.formats}, expected "
                                 "formats alone (--set ~export.format)")
        if self.outtype is not None and "gguf" not in self.all_formats:
            raise ValueError(f"got outtype={self.outtype} with format=hf, expected outtype only with "
                             "format: gguf (--format gguf), or no outtype (--set ~export.outtype)")
        return self

    @property
    def all_formats(self) -> list[str]:
        return list(self.formats or [self.format])

    def gguf_outtype(self) -> tuple[str, str | None]:
        """The GGUF tensor type, and a note when ``dtype`` (a Hugging Face setting) was mapped
        to it or left aside: a recipe written for ``hf`` exports to GGUF as it is."""
        if self.outtype is not None:
            ignored = self.dtype != "auto" and DTYPE_OUTTYPE[self.dtype] != self.outtype
            return self.outtype, (f"export.dtype={self.dtype} is ignored for GGUF "
                                  f"(outtype {self.outtype})" if ignored else None)
        if self.dtype != "auto":
            return DTYPE_OUTTYPE[self.dtype], None
        return DEFAULT_OUTTYPE, None


#: a Hugging Face export dtype -> the GGUF tensor type that keeps it
DTYPE_OUTTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
#: llama.cpp's converter's default
DEFAULT_OUTTYPE = "f16"


class ExecutionConfig(NewKeysSection):
    new_keys = ("keep_history",)
    mode: Literal["model", "layerwise"] = "model"
    #: memory a step may use (GiB) on the device, or in host memory on the CPU; a step whose
    #: estimate exceeds it is refused before it starts (default: what is free)
    memory_budget_gb: float | None = Field(None, gt=0)
    #: replaced results kept in history/ per step, newest first (default: all, until `gc`)
    keep_history: int | None = Field(None, ge=1)


class Recipe(Section):
    model: ModelConfig
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    #: validated by the named method's own ``Config`` (see ``methods/registry.py``)
    method: SerializeAsAny[MethodConfig]
    target: TargetConfig = Field(default_factory=TargetConfig)
    recover: RecoverConfig | None = None
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_eval_section(cls, data: Any) -> Any:
        """No ``eval:`` section measures nothing, as no ``recover:`` trains nothing: the default
        perplexity set (WikiText-2) comes from the hub, and a run must not need the network
        for a section it never asked for.  Pinned as ``datasets: []``, so it stays so."""
        if isinstance(data, dict) and "eval" not in data:
            data = {**data, "eval": {"perplexity": {"datasets": []}}}
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError(
                f"got {value!r}, expected a mapping with a name, e.g. "
                f"{{name: manual, remove: [layers.3.mlp]}}; methods: {', '.join(METHODS)}"
            )
        if (info.context or {}).get("light"):  # the name alone: its options need its module
            return MethodConfig(name=canonical_name(str(value["name"])))
        return parse_method_config(value)

    def section_dict(self, name: str) -> dict[str, Any] | None:
        """One section as plain JSON data (``None`` for an absent optional section)."""
        if name not in type(self).model_fields:
            raise KeyError(f"recipe has no section {name!r}")
        section = getattr(self, name)
        return None if section is None else section.model_dump(mode="json")

    def to_dict(self) -> dict[str, Any]:
        """The whole recipe, defaults filled in, as plain data (what the project pins)."""
        return self.model_dump(mode="json")


