"""``recover``: LoRA fine-tuning of a pruned model, merged and saved in the pruned model format.

Works on any model saved in the project (block, width or taylor results, uniform or not).  Files
under ``out_dir`` (``recovered/`` of the project):

- ``checkpoints/``: the Trainer's checkpoints every ``save_steps``; a killed run resumes from the
  last one (global step, optimizer, scheduler and data order continue);
- ``inputs.json``: the ``recover`` section and the source model's files (name, size, mtime) the
  checkpoints were made from; when they differ (or with ``--force``) training starts afresh;
- ``eval_before.json``: validation loss of the pruned model, measured once;
- ``adapter/``: the LoRA adapter alone (peft format), for users who keep it separate;
- ``model/``: the merged model (``merge_and_unload``), saved with ``save_model``;
- ``summary.json``: the figures ``run_recovery`` returns.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunectl.io import read_json, write_json

if TYPE_CHECKING:
    from prunectl.context import RunContext


def _save_adapter(peft_model, directory: Path) -> None:
    """Write the adapter beside ``directory`` and rename it into place (no half-written adapter)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{directory.name}.tmp-", dir=directory.parent))
    try:
        peft_model.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _inputs(run: RunContext, source_dir: Path) -> dict:
    files = sorted(p for p in Path(source_dir).rglob("*") if p.is_file())
    return {
        "recover": run.recipe.recover.model_dump(mode="json"),
        "source": [[p.relative_to(source_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
                   for p in files],
    }


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
    """Train LoRA on the model in ``source_dir`` with the recipe's ``recover`` section, merge it and
    save the result to ``out_dir / "model"``; return the summary (losses, steps, seconds).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress, tests).
    """
    from prunectl.modeling.loading import load_project_model, load_project_tokenizer
    from prunectl.modeling.pruned_format import save_model
    from prunectl.recovery.data import build_examples
    from prunectl.recovery.lora import make_trainer, train

    cfg = run.recipe.recover
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _start_or_resume(run, Path(source_dir), out_dir)
    tokenizer = load_project_tokenizer(source_dir)
    train_set, val_set = build_examples(cfg, tokenizer)
    run.ui.info(f"recover: {len(train_set)} training and {len(val_set)} validation examples")
    model = load_project_model(source_dir, run.device, run.dtype)
    trainer = make_trainer(
        model, tokenizer, train_set, val_set, cfg, out_dir / "checkpoints", run.ui, callbacks
    )
    before_file = out_dir / "eval_before.json"
    if val_set and not before_file.exists():  # LoRA starts as a no-op: this is the pruned model
        write_json(before_file, {"eval_loss": trainer.evaluate()["eval_loss"]})
    before = read_json(before_file)["eval_loss"] if val_set else None
    summary = {"eval_loss_before": before, **train(trainer, run.ui)}
    summary.update(train_examples=len(train_set), val_examples=len(val_set))
    _save_adapter(trainer.model, out_dir / "adapter")
    merged = trainer.model.merge_and_unload()
    save_model(merged, tokenizer, out_dir / "model", run.dtype)
    summary["seconds"] = time.perf_counter() - started
    write_json(out_dir / "summary.json", summary)
    return summary
