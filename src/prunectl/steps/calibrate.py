"""``calibrate``: tokenize calibration text and collect the method's activation statistics."""

from __future__ import annotations

from prunectl.context import RunContext
from prunectl.data import calibration_tokens
from prunectl.io import save_tensors, write_json
from prunectl.methods.registry import create_method
from prunectl.steps import artifacts
from prunectl.steps.base import StepOutcome, StepResult, execute, recipe_sections
from prunectl.steps.inputs import calibration_journal, method_inputs


def key(run: RunContext) -> tuple[dict, list]:
    """What calibration depends on: the model, the text settings and which statistics."""
    method = create_method(run.recipe.method)
    sections = recipe_sections(run, "model", "calibration")
    sections["method"] = {"name": method.name, "statistics": method.uses_statistics}
    return sections, []


def calibrate(run: RunContext) -> StepResult:
    method = create_method(run.recipe.method)

    def body() -> StepOutcome:
        cfg = run.recipe.calibration
        outputs = []
        summary = {"method": method.name}
        if method.pipeline.reads_tokens:
            artifacts.check_memory(run, "calibrate")
            model, tokenizer = artifacts.dense_model(run)
            tokens = calibration_tokens(
                tokenizer, cfg.dataset, cfg.split, cfg.nsamples, cfg.seqlen, cfg.seed,
                style=None if cfg.style == "auto" else cfg.style,
            )
            if run.dist.is_main:
                save_tensors(artifacts.path(run, artifacts.TOKENS), {"input_ids": tokens})
            outputs.append(artifacts.path(run, artifacts.TOKENS))
            summary.update(windows=tokens.shape[0], seqlen=tokens.shape[1], seed=cfg.seed)
            if method.uses_statistics:
                stats = method.statistics(method_inputs(run, method, model, "calibration",
                                                        tokens, calibration_journal(run)))
                if run.dist.is_main:
                    save_tensors(artifacts.path(run, artifacts.STATS), stats)
                outputs.append(artifacts.path(run, artifacts.STATS))
                summary["statistics"] = len(stats)
        else:
            summary["note"] = f"{method.name} needs no calibration data"
        meta = artifacts.path(run, ("calibration", "meta.json"))
        if run.dist.is_main:
            write_json(meta, {"dataset": cfg.dataset, "split": cfg.split, **summary})
        outputs.append(meta)
        return StepOutcome(outputs, summary)

    return execute(run, "calibrate", key, {}, body)
