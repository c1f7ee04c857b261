"""``recover``: LoRA fine-tuning of a pruned model, merged and saved in the pruned model format
(or full fine-tuning, and distillation from the dense model: :mod:`prunectl.recovery.distill`).

Works on any model saved in the project (block, width or taylor results, uniform or not).  Files
under ``out_dir`` (``recovered/`` of the project):

- ``checkpoints/``: the Trainer's checkpoints every ``save_steps``; a killed run resumes from the
  last one (global step, optimizer, scheduler and data order continue);
- ``inputs.json``: the ``recover`` section and the digest of the source model the checkpoints
  were made from; when they differ (or with ``--force``) training starts afresh;
- ``eval_before.json``: validation loss of the pruned model, measured at every start without
  a checkpoint (it is part of the run's random stream), kept when resuming from one;
- ``adapter/``: the LoRA adapter alone (peft format), for users who keep it separate;
- ``model/``: the merged model (``merge_and_unload``), saved with ``save_model``;
- ``summary.json``: the figures ``run_recovery`` returns;
- ``teacher_topk/``: with ``objective: kd | kd+lm`` and ``kd.cache_topk``, the teacher's cached
  top-k logits (:mod:`prunectl.recovery.teacher`); with ``mode: full``, ``model/`` is the trained
  model itself and there is no ``adapter/``.

Under torchrun / accelerate launch the Trainer trains data-parallel (or with the FSDP/DeepSpeed
config of ``recover.distributed``, see :mod:`prunectl.recovery.parallel`); only rank 0 writes
these files.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunectl.digest import digest
from prunectl.io import read_json, write_json

if TYPE_CHECKING:
    from prunectl.context import RunContext
    from prunectl.distributed import Distributed


def _save_adapter(trainer, directory: Path, dist: Distributed, base: Path) -> None:
    """Save the adapter through the Trainer (which gathers it under DDP, FSDP or DeepSpeed: every
    rank calls this, rank 0 writes) beside ``directory``, then rename it into place.

    ``base_model_name_or_path`` becomes ``base`` (the project's pruned model) absolute: peft
    passes the value to ``from_pretrained`` as it is, so a relative path resolves against the
    working directory, never the adapter's, and the pruned model has no hub id to name."""
    tmp = directory.with_name(f"{directory.name}.tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if dist.is_main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # the Trainer's, not the adapter's
        config = read_json(tmp / "adapter_config.json")
        config["base_model_name_or_path"] = str(Path(base).resolve())
        write_json(tmp / "adapter_config.json", config)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)


def _merge(run: RunContext, source_dir: Path, adapter_dir: Path, tokenizer, model_dir: Path):
    """The pruned model with the saved adapter merged in (``merge_and_unload``), saved: the
    same on every strategy, since the adapter file holds the full (gathered) LoRA weights."""
    from peft import PeftModel

    from prunectl.modeling.loading import load_project_model
    from prunectl.formats.hf import save_model

    base = load_project_model(source_dir, run.device, run.dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    save_model(merged, tokenizer, model_dir, run.dtype)


def _inputs(run: RunContext, source_dir: Path) -> dict:
    return {"recover": run.recipe.recover.model_dump(mode="json"),
            "source": digest(Path(source_dir))}


def _start_or_resume(run: RunContext, source_dir: Path, out_dir: Path) -> None:
    """Keep the checkpoints only if they were made from the same inputs, and not under --force."""
    inputs, record = _inputs(run, source_dir), out_dir / "inputs.json"
    stale = record.exists() and read_json(record) != inputs
    if (run.force or stale) and (out_dir / "checkpoints").exists():
        run.ui.warn(f"recover: {'--force' if run.force else 'inputs changed'}: training afresh, "
                    f"removing {out_dir / 'checkpoints'}")
        shutil.rmtree(out_dir / "checkpoints")
    if run.force or stale:
        (out_dir / "eval_before.json").unlink(missing_ok=True)
    write_json(record, inputs)


def run_recovery(
    run: RunContext, source_dir: Path, out_dir: Path, callbacks: Sequence[Any] = ()
) -> dict:
    """Train the model in ``source_dir`` with the recipe's ``recover`` section (LoRA, merged
    afterwards, or every weight with ``mode: full``) and save the result to ``out_dir / "model"``;
    return the summary (losses, steps, seconds).

    Under a launcher every rank runs this: the Trainer splits each global batch over the ranks,
    rank 0 alone writes the files above (the Trainer its checkpoints), and every rank returns
    rank 0's summary.  ``callbacks`` are extra ``transformers.TrainerCallback`` objects.
    """
    from prunectl.modeling.loading import load_project_model, load_project_tokenizer
    from prunectl.recovery.data import build_examples
    from prunectl.recovery.full import save_trained
    from prunectl.recovery.lora import (
        before_callback,
        last_checkpoint,
        make_trainer,
        train,
        training_arguments,
    )
    from prunectl.recovery.parallel import check

    cfg, dist = run.recipe.recover, run.dist
    started = time.perf_counter()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    strategy = check(cfg, run.device, dist.world_size)
    tokenizer = load_project_tokenizer(source_dir)
    train_set, val_set = build_examples(cfg, tokenizer)
    trainer_class = None
    if cfg.objective != "lm":  # the teacher first: a cache build frees it before the student loads
        from prunectl.recovery.distill import figures
        from prunectl.recovery.teacher import distill_trainer

        train_set, val_set, trainer_class = distill_trainer(run, train_set, val_set, out_dir)
    before_file = out_dir / "eval_before.json"

    def start_or_resume() -> str | None:  # inputs checked, checkpoints kept or dropped
        out_dir.mkdir(parents=True, exist_ok=True)
        _start_or_resume(run, source_dir, out_dir)
        return last_checkpoint(out_dir / "checkpoints")

    resume = dist.decide(start_or_resume)  # one rank decides and writes
    run.ui.info(f"recover: {len(train_set)} training and {len(val_set)} validation examples, "
                f"{dist.world_size} process(es), {strategy}")
    # the pruned model's loss (LoRA starts as a no-op) is measured inside train(), once the
    # Trainer has wrapped the model: a Trainer.evaluate() before train() would leave it
    # unwrapped under DDP (accelerate marks it prepared), so the ranks would not sync gradients.
    # Measured on every start without a checkpoint, even when eval_before.json exists (a run
    # killed before its first checkpoint): the evaluation is part of the run's random stream,
    # and a resume must give the uninterrupted result
    measure = bool(val_set) and resume is None
    args = training_arguments(cfg, out_dir / "checkpoints", run.device, run.dtype,
                              len(train_set), bool(val_set), dist.world_size, eval_on_start=measure)
    model = load_project_model(source_dir, run.device, run.dtype)
    callbacks = [*([before_callback(before_file)] if measure else []), *callbacks]
    trainer = make_trainer(model, tokenizer, train_set, val_set, cfg, args, run.ui, callbacks,
                           trainer_class)
    summary = train(trainer, resume, dist, run.ui)
    history = trainer.state.log_history, trainer.state.best_model_checkpoint
    if cfg.mode == "full":
        save_trained(trainer, tokenizer, out_dir / "model", run.dtype, dist.is_main)
    else:
        _save_adapter(trainer, out_dir / "adapter", dist, source_dir)
    del trainer, model  # rank 0 loads the pruned model again to merge: free this one first
    gc.collect()
    summary.update(train_examples=len(train_set), val_examples=len(val_set))
    if dist.is_main:
        before = read_json(before_file) if before_file.exists() else None
        summary = {"eval_loss_before": before and before["eval_loss"], **summary}
        if cfg.objective != "lm":
            summary.update(figures(before, *history))
        if cfg.mode == "lora":
            _merge(run, source_dir, out_dir / "adapter", tokenizer, out_dir / "model")
        summary["seconds"] = time.perf_counter() - started
        write_json(out_dir / "summary.json", summary)
    return dist.broadcast_object(summary)
