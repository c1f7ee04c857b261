"""LoRA training with peft and the transformers Trainer, checkpointed and resumable.

Hyper-parameters follow LLM-Pruner's ``post_training.py`` as run in its README (r 8, alpha 16,
dropout 0.05, every linear projection, lr 1e-4, 2 epochs, batch 64 in micro-batches of 4, AdamW,
linear decay, evaluation and selection of the best checkpoint by validation loss).  Deviations:
the warm-up is the reference's 100 steps capped at a tenth of the run, so short runs are not all
warm-up; mixed precision follows the model dtype (bf16 or fp16 on CUDA, none on CPU) instead of
always fp16; checkpoints every ``save_steps`` with evaluation at the same steps (the reference
evaluates every 100 and saves every 200 steps).  Under a launcher the global batch stays
``batch_size`` (see :mod:`prunectl.recovery.parallel`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunectl.digest import MANIFEST, check_folder, seal
from prunectl.recovery.data import IGNORE
from prunectl.recovery.parallel import accumulation, trainer_options
from prunectl.ui import SILENT, UI

if TYPE_CHECKING:
    from prunectl.distributed import Distributed

REFERENCE_WARMUP = 100
SHOWN = ("loss", "eval_loss", "learning_rate", "train_loss")  # log keys worth a line on stderr
#: a checkpoint file written by a rank other than the main process (sealed by none)
OTHER_RANK_RNG = re.compile(r"rng_state_[1-9]\d*\.pth")


def total_steps(cfg, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run: ``max_steps`` or the epochs over the training examples (each
    process takes every ``world_size``-th micro-batch)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    batches = math.ceil(math.ceil(n_train / cfg.micro_batch_size) / world_size)
    per_epoch = batches // accumulation(cfg, world_size)
    return max(1, math.ceil(max(per_epoch, 1) * cfg.num_epochs))


def lora_model(model: nn.Module, cfg) -> nn.Module:
    """The model wrapped with LoRA adapters on ``target_modules`` (``all-linear``: every linear
    layer but the LM head, found by peft on any class, pruned ones included)."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.config.use_cache = False
    set_seed(cfg.seed)  # the adapters' random init: a resumed and a straight run start alike
    return get_peft_model(model, config)


def training_arguments(
    cfg,
    output_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    n_train: int,
    has_eval: bool,
    world_size: int = 1,
    eval_on_start: bool = False,
):
    """The Trainer's arguments; ``world_size`` processes share each global batch of
    ``cfg.batch_size`` examples; ``eval_on_start`` evaluates before the first step."""
    from transformers import TrainingArguments

    cuda = device.type == "cuda"
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation(cfg, world_size),
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        warmup_steps=min(REFERENCE_WARMUP, total_steps(cfg, n_train, world_size) // 10),
        optim="adamw_torch",
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        logging_steps=10,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_on_start=eval_on_start,
        eval_steps=cfg.save_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=3,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs=(
            {"use_reentrant": False} if cfg.gradient_checkpointing else None
        ),
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        **trainer_options(cfg),
    )


def _ui_callback(ui: UI):
    """Training logs to the UI (stderr) instead of the Trainer's printer on stdout."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = ", ".join(f"{k} {logs[k]:.4g}" for k in SHOWN if k in (logs or {}))
            if shown:
                ui.info(f"recover: step {state.global_step}/{state.max_steps}: {shown}")

    return Report()


LOSS_STATE = "RunningLoss"


def _running_loss(trainer):
    """Carries the Trainer's sum of training losses through checkpoints, so a resumed run's
    ``train_loss`` is the mean over the whole run (the Trainer's own covers only the steps of
    its last ``train()`` call).  Every checkpoint is made a logging step too: the Trainer adds a
    step's loss to its sum only when it logs, so the sum saved is exact, and a resumed run adds
    the later steps in the same order as an uninterrupted one (bit-identical figures)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class RunningLoss(TrainerCallback, ExportableState):
        def state(self) -> dict:
            total = getattr(trainer, "_total_loss_scalar", 0.0)
            return {"args": {}, "attributes": {"loss_sum": total}}

        def on_train_begin(self, args, state, control, **kwargs):
            trainer._total_loss_scalar = saved_loss_sum(state)

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                control.should_log = True
            return control

    return RunningLoss()


def saved_loss_sum(state) -> float:
    """The sum of training losses up to ``state.global_step`` kept by :func:`_running_loss`."""
    saved = (state.stateful_callbacks or {}).get(LOSS_STATE) or {}
    return float(saved.get("attributes", {}).get("loss_sum", 0.0))


def before_callback(path: Path):
    """Writes the evaluation before the first step (``eval_on_start``) to ``path``, from the
    main process, as soon as it is known: a resumed run must not measure again."""
    from transformers import TrainerCallback

    from prunectl.io import write_json

    class Before(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step == 0 and state.is_world_process_zero:
                write_json(path, metrics)

    return Before()


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint in ``output_dir``, or None.

    The Trainer writes a checkpoint in place and its ``trainer_state.json`` last, so a process
    killed while saving leaves a torn directory that ``get_last_checkpoint`` would pick; such
    directories (no readable state) are removed, and the one before them is resumed.
    """
    if not output_dir.is_dir():
        return None
    steps = {}
    for path in output_dir.glob("checkpoint-*"):
        if path.is_dir() and path.name.split("-")[-1].isdigit():
            steps[int(path.name.split("-")[-1])] = path
    found = None
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / "trainer_state.json").read_text())
        except (OSError, ValueError):
            if found is None:
                shutil.rmtree(steps[step])
            continue
        found = found or str(steps[step])
        # the adapter, optimizer and scheduler state are read back as they were sealed
        check_folder(steps[step], f"re-run `prunectl recover --force` to train afresh, or "
                                  f"delete {steps[step]} to resume from an earlier checkpoint")
    return found


def seal_callback():
    """Records the digests of each checkpoint's files once the Trainer saved it, so that a
    resumed run refuses a damaged adapter or optimizer state.  The main process seals what it
    wrote: another rank's RNG state may still be being written at that moment."""
    from transformers import TrainerCallback

    class Seal(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                seal(*(p for p in sorted(folder.iterdir()) if p.is_file()
                       and p.name != MANIFEST and not OTHER_RANK_RNG.fullmatch(p.name)))

    return Seal()


def make_trainer(
    model: nn.Module,
    tokenizer,
    train_set: list[dict],
    val_set: list[dict],
    cfg,
    args,
    ui: UI = SILENT,
    callbacks: Sequence[Any] = (),
    trainer_class=None,
):
    """A Trainer of LoRA adapters on ``model`` (of all its weights with ``mode: full``) with
    ``args`` (from :func:`training_arguments`); ``trainer_class`` replaces the Trainer class."""
    from transformers import (
        DataCollatorForSeq2Seq,
        PrinterCallback,
        ProgressCallback,
        Trainer,
    )

    from prunectl.recovery.full import full_model

    trainer = (trainer_class or Trainer)(
        model=lora_model(model, cfg) if cfg.mode == "lora" else full_model(model),
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set or None,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True,
            label_pad_token_id=IGNORE,
        ),
        callbacks=[_ui_callback(ui), seal_callback(), *callbacks],
    )
    trainer.add_callback(_running_loss(trainer))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def train(trainer, resume: str | None, dist: Distributed, ui: UI = SILENT) -> dict:
    """Train, resuming from the checkpoint ``resume`` (every rank the same one); the model ends
    with the best checkpoint by validation loss loaded (when there is a validation set).

    Returns figures, equal on every rank: the training loss is the mean of the ranks' means
    (equal shares of every step), the losses and steps are the Trainer's global ones.
    """
    # counted before the Trainer wraps (and maybe shards) the model
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    has_eval = trainer.eval_dataset is not None
    if resume and _finished(resume):
        ui.info(f"recover: {resume} is the end of the run; loading it, no step to train")
        _reload_finished(trainer, resume, has_eval)
    else:
        if resume:
            ui.info(f"recover: resuming from {resume}")
        trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    resumed_step = int(Path(resume).name.split("-")[-1]) if resume else None
    loss_sum = getattr(trainer, "_total_loss_scalar", None)
    if loss_sum is None:
        loss_sum = saved_loss_sum(state)
    losses = dist.gather_objects(loss_sum / max(state.global_step, 1))
    return {
        "train_loss": sum(losses) / len(losses) if state.global_step else None,
        "eval_loss_after": state.best_metric if has_eval else None,
        "eval_losses": [log["eval_loss"] for log in state.log_history
                        if "eval_loss" in log and log["step"] > 0],
        "steps": state.global_step,
        "resumed_from_step": resumed_step,
        "trainable_parameters": trainable,
    }


def _finished(checkpoint: str) -> bool:
    """Whether ``checkpoint`` is the run's last step: training from it would run one step past
    ``max_steps`` (the Trainer checks for the end only after a step)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"]


def _reload_finished(trainer, checkpoint: str, has_eval: bool) -> None:
    """What ``train()`` ends with, without training: the run's state, and the adapter of its best
    checkpoint (``load_best_model_at_end``) or of its last one."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint if has_eval else None
    trainer._load_from_checkpoint(best if best and Path(best).is_dir() else checkpoint)
