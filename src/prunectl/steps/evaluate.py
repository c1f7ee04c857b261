"""``eval``: perplexity, zero-shot tasks and speed for the dense, pruned and recovered models.

Every result is its own JSON file that records the settings and the fingerprint of the model it
measured, so a re-run computes only what is missing or out of date.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from prunectl.context import RunContext
from prunectl.digest import check_sealed, digest, sealed_write
from prunectl.errors import UserError
from prunectl.io import load_tensors, read_json, save_tensors, write_json
from prunectl.steps import artifacts
from prunectl.steps.base import StepOutcome, StepResult, execute, recipe_sections, skip

PRODUCED_BY = {"pruned": "apply", "recovered": "recover"}


def _slug(dataset: str) -> str:
    name = Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def model_fingerprints(run: RunContext) -> dict[str, str]:
    """The models this project has: the dense one by its recipe section, the project's by the
    digest of their files (verified), so a re-made model is measured again."""
    found: dict[str, str] = {}
    for role in run.recipe.eval.models:
        if role == "dense":
            found[role] = digest(recipe_sections(run, "model"))
            continue
        record = run.project.record(PRODUCED_BY[role]) or {}
        if record.get("status") == "done":
            found[role] = run.project.output_digest(PRODUCED_BY[role],
                                                    "/".join(artifacts.MODEL_DIRS[role]))
    return found


def _tokenizer_digest(tokenizer) -> str:
    """What the tokenizer is, not where it was loaded from: the dense and the pruned model
    share one token cache (their tokenizers' paths differ, their vocabularies do not)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return digest(backend.to_str().encode())
    return digest(sorted(tokenizer.get_vocab().items()))


def _evaluation_tokens(run: RunContext, tokenizer, dataset: str) -> torch.Tensor:
    """Evaluation text tokenized once per project and cached beside the results."""
    from prunectl.data import evaluation_tokens

    cfg = run.recipe.eval.perplexity
    key = digest([dataset, cfg.split, cfg.add_bos, _tokenizer_digest(tokenizer)])[:16]
    cache = run.project.path("eval", "tokens", f"{_slug(dataset)}-{key}.safetensors")
    # sealed when written: a changed cache is refused (an unsealed one is tokenized again)
    if cache.exists() and check_sealed(cache, f"delete {cache} (it is tokenized again)"):
        return load_tensors(cache)["input_ids"]
    tokens = evaluation_tokens(tokenizer, dataset, cfg.split, add_bos=cfg.add_bos)
    if run.dist.is_main:  # under torchrun every rank tokenizes; rank 0 alone writes files
        sealed_write(cache, partial(save_tensors, cache, {"input_ids": tokens}))
    return tokens


def _saved_perplexity(run: RunContext, out: Path, fingerprint: str, settings: dict) -> float | None:
    """The perplexity saved in ``out`` if it was measured on this model with these settings."""
    if run.force or not out.exists():
        return None
    check_sealed(out, f"re-run `prunectl eval -p {run.project.root} --force`, or delete {out}")
    cached = read_json(out)
    if not isinstance(cached, dict):
        return None
    if cached.get("model_fingerprint") == fingerprint and cached.get("settings") == settings:
        return cached["perplexity"]
    return None


def _perplexities(run: RunContext, role: str, fingerprint: str, model, tokenizer) -> dict:
    from prunectl.evaluation.perplexity import perplexity

    cfg = run.recipe.eval.perplexity
    results = {}
    for dataset in cfg.datasets:
        settings = {
            "dataset": dataset,
            "split": cfg.split,
            "seqlen": cfg.seqlen,
            "max_windows": cfg.max_windows,
            "add_bos": cfg.add_bos,
            "dtype": str(run.dtype).removeprefix("torch."),
        }
        out = run.project.path("eval", role, f"perplexity-{_slug(dataset)}.json")
        cached = run.dist.decide(lambda: _saved_perplexity(run, out, fingerprint, settings))
        if cached is not None:
            results[dataset] = cached
            continue
        tokens = _evaluation_tokens(run, tokenizer, dataset)
        result = perplexity(
            model, tokens, cfg.seqlen, cfg.batch_size, max_windows=cfg.max_windows, ui=run.ui
        )
        if run.dist.is_main:
            sealed_write(out, partial(
                write_json, out,
                {**result, "model": role, "model_fingerprint": fingerprint, "settings": settings,
                 "device": str(run.device)},
            ))
        run.ui.info(f"{role} perplexity on {dataset}: {result['perplexity']:.3f}")
        results[dataset] = result["perplexity"]
    return results


def _tasks(run: RunContext, role: str, fingerprint: str, model, tokenizer, tasks: list[str]) -> dict:
    from prunectl.evaluation.tasks import run_tasks

    cfg = run.recipe.eval
    return run_tasks(
        model,
        tokenizer,
        tasks,
        task_paths=cfg.task_paths,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        batch_size=cfg.task_batch_size,
        out_dir=run.project.path("eval", role, "tasks"),
        model_label=role,
        dtype=str(run.dtype).removeprefix("torch."),
        model_fingerprint=fingerprint,
        ui=run.ui,
    )


def _speed(run: RunContext, role: str, model, tokenizer) -> dict:
    from prunectl.evaluation.speed import measure_speed

    if role == "dense":  # a local checkpoint has an on-disk size to compare with; a hub id not
        local = Path(run.recipe.model.path)
        model_dir = local if local.is_dir() else None
    else:
        model_dir = run.project.path(*artifacts.MODEL_DIRS[role])
    result = measure_speed(model, tokenizer, device=run.device, model_dir=model_dir)
    if run.dist.is_main:  # every rank measures its own device; rank 0's figures are saved
        write_json(run.project.path("eval", role, "speed.json"), result)
    return result


def _llama_cpp(run: RunContext, role: str, fingerprint: str, model, tokenizer, engine: Path
               ) -> dict[str, dict]:
    """``role`` written as GGUF at each of ``eval.llama_cpp.outtypes`` (the dense model as
    ``<model>-dense-<type>``) and its perplexity measured in llama.cpp on the windows
    transformers scores; a result of the same model and settings is reused."""
    from prunectl.evaluation import llama_cpp
    from prunectl.formats.gguf.writer import write_gguf
    from prunectl.steps.export_gguf import base_name, vocab_source

    cfg = run.recipe.eval
    found = {}
    for outtype in cfg.llama_cpp.outtypes:
        name = f"{base_name(run)}-{role}-{outtype}"
        path = run.project.path("eval", role, "gguf", f"{name}.gguf")
        out = run.project.path("eval", role, f"llama-cpp-{outtype}.json")
        settings = {"perplexity": cfg.perplexity.model_dump(), "threads": cfg.llama_cpp.threads}
        cached = read_json(out) if out.exists() and not run.force else {}
        if (isinstance(cached, dict) and cached.get("model_fingerprint") == fingerprint
                and cached.get("settings") == settings and path.exists()):
            found[f"{role}-{outtype}"] = cached
            continue
        result = write_gguf(model, tokenizer, path, outtype, name=name,
                            vocab_source=vocab_source(run))
        perplexities = {}
        for dataset in cfg.perplexity.datasets:
            tokens, seqlen = _evaluation_tokens(run, tokenizer, dataset), cfg.perplexity.seqlen
            windows = min(tokens.numel() // seqlen, cfg.perplexity.max_windows or tokens.numel())
            ids = tokens[: windows * seqlen].view(windows, seqlen).tolist()
            perplexities[dataset] = llama_cpp.perplexity(engine, path, ids,
                                                         cfg.llama_cpp.threads)
            run.ui.info(f"{role} {outtype} perplexity in llama.cpp on {dataset}: "
                        f"{perplexities[dataset]['perplexity']:.3f}")
        found[f"{role}-{outtype}"] = {
            "model": role, "outtype": outtype, "file": str(path), "bytes": path.stat().st_size,
            "arch": result.arch, "fallbacks": result.fallbacks, "perplexity": perplexities,
            "model_fingerprint": fingerprint, "settings": settings}
    return found


def _llama_cpp_speed(run: RunContext, results: dict[str, dict], engine: Path,
                     prompt: list[int]) -> None:
    """Prompt and decode speed of every file, interleaved, each against the dense file of the
    same type (``vs_dense``: per-round ratios); saved beside the perplexities."""
    from prunectl.evaluation import llama_cpp

    cfg = run.recipe.eval.llama_cpp
    if cfg.speed:
        files = {name: Path(entry["file"]) for name, entry in results.items()}
        speeds = llama_cpp.speed(engine, files, prompt, cfg.gen, cfg.repeats, cfg.threads)
        for name, entry in results.items():
            entry["speed"] = speeds[name]
            dense = speeds.get(f"dense-{entry['outtype']}")
            if dense is not None and entry["model"] != "dense":
                entry["vs_dense"] = llama_cpp.ratios(speeds[name], dense)
    for entry in results.values():
        write_json(run.project.path("eval", entry["model"], f"llama-cpp-{entry['outtype']}.json"),
                   entry)


def key(run: RunContext, tasks: list[str] | None = None, speed: bool | None = None) -> tuple[dict, list]:
    tasks = run.recipe.eval.tasks if tasks is None else tasks
    speed = run.recipe.eval.speed if speed is None else speed
    sections = recipe_sections(run, "eval")
    sections["run"] = {"models": model_fingerprints(run), "tasks": tasks, "speed": speed}
    return sections, []


def evaluate(run: RunContext, tasks: list[str] | None = None, speed: bool | None = None) -> StepResult:
    cfg = run.recipe.eval
    if not (cfg.perplexity.datasets or (cfg.tasks if tasks is None else tasks)
            or (cfg.speed if speed is None else speed)):
        return skip(run, "eval", "the recipe measures nothing: no `eval` section, or no "
                    "eval.perplexity.datasets, tasks or speed (--set "
                    "eval.perplexity.datasets=[wikitext2] downloads WikiText-2)")
    fingerprints = run.dist.decide(lambda: model_fingerprints(run))
    if tasks:  # `eval --tasks`: names the recipe check did not see, refused before any result
        from prunectl.evaluation.tasks import check_tasks

        check_tasks(tasks, run.recipe.eval.task_paths)

    def body() -> StepOutcome:
        artifacts.check_memory(run, "eval")
        chosen_tasks = run.recipe.eval.tasks if tasks is None else tasks
        measure = run.recipe.eval.speed if speed is None else speed
        summary: dict[str, Any] = {}
        speeds: dict[str, dict] = {}
        engine = None
        if run.recipe.eval.llama_cpp.outtypes and run.dist.is_main:
            from prunectl.evaluation.llama_cpp import find_engine

            engine = find_engine()  # refused before any model is measured
            if not run.recipe.eval.perplexity.datasets:
                raise UserError("eval.llama_cpp measures on eval.perplexity.datasets, which is "
                                "empty; name a dataset there")
        in_llama_cpp: dict[str, dict] = {}
        prompt: list[int] = []
        for role, fingerprint in fingerprints.items():
            model, tokenizer = (
                artifacts.dense_model(run) if role == "dense" else artifacts.project_model(run, role)
            )
            figures: dict[str, Any] = {}
            for dataset, value in _perplexities(run, role, fingerprint, model, tokenizer).items():
                figures[f"ppl_{_slug(dataset)}"] = round(value, 4)
            if chosen_tasks:
                figures.update(_tasks(run, role, fingerprint, model, tokenizer, chosen_tasks))
            if measure:
                speeds[role] = _speed(run, role, model, tokenizer)
            if engine is not None:
                in_llama_cpp.update(_llama_cpp(run, role, fingerprint, model, tokenizer, engine))
                first = run.recipe.eval.perplexity.datasets[0]
                prompt = prompt or _evaluation_tokens(run, tokenizer, first)[
                    : run.recipe.eval.llama_cpp.prompt].tolist()
            summary[role] = figures
            if role != "dense":
                run.models.pop(role, None)  # one model in memory at a time
        if measure and "dense" in speeds:
            from prunectl.evaluation.speed import speed_ratios

            for role, result in speeds.items():
                if role != "dense":
                    ratios = speed_ratios(result, speeds["dense"])
                    if run.dist.is_main:
                        write_json(run.project.path("eval", role, "speed.json"),
                                   {**result, "vs_dense": ratios})
                    summary[role]["speed_vs_dense"] = ratios
        if in_llama_cpp:
            _llama_cpp_speed(run, in_llama_cpp, engine, prompt)
        if run.dist.is_main:  # the report (and so the model card) follows every evaluation
            from prunectl.evaluation.report import write_report

            write_report(run.project.root)
        # the models' result files: eval/report.md and the plots are rewritten by `report`
        results = [run.project.path("eval", role) for role in fingerprints]
        return StepOutcome([d for d in results if d.exists()], summary)

    options = {k: v for k, v in (("tasks", tasks), ("speed", speed)) if v is not None}
    return execute(run, "eval", key, options, body)
