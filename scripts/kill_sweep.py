"""Opt-in kill sweep: SIGKILL ``prunectl run`` at file writes spread over seven pipelines on tiny
random models and check that re-running resumes to exactly the uninterrupted result.

Per pipeline: one uninterrupted ``run`` is the reference, recorded with the audit hook of
``tests/killpoints.py`` in counting mode (every write under the project, in order).  Each kill
point is the nth of those writes (``--points`` of them, spread evenly over the run, alternately
killed while that write starts and just after it); the pipeline runs in a fresh project, is
SIGKILLed there, and ``prunectl run`` is repeated until it exits 0 (at most ``--retries`` times).
The finished project is then compared with the reference: plan.json (minus timings), every tensor
of the pruned, recovered and exported weights by digest, the evaluation perplexities, the
recovery figures and the export's files by digest.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/kill_sweep.py --points 3 --json sweep.json

Not part of the test suite or CI (minutes of subprocesses).  Prints one line per pipeline: kills
fired, resumed identical, differences; exit 1 when any kill did not resume identically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from helpers import TEXT, save_tiny, write_recipe  # noqa: E402
from killpoints import kill_env, prunectl, record_env  # noqa: E402

EVAL = {"perplexity": {"seqlen": 24, "max_windows": 4, "batch_size": 2}}
LORA = {"format": "text", "cutoff_len": 24, "batch_size": 4, "micro_batch_size": 2,
        "max_steps": 4, "save_steps": 2, "val_set_size": 4, "learning_rate": 5e-3,
        "lora_dropout": 0.0, "max_samples": 24}
KD = {**LORA, "objective": "kd+lm", "mode": "full", "learning_rate": 1e-3,
      "kd": {"temperature": 2.0, "weight": 0.7, "cache_topk": 16}}
#: pipeline -> recipe sections (beside model, calibration, eval and export)
PIPELINES = {
    "block": {"method": {"name": "block", "block_type": "mix", "batch_size": 2},
              "target": {"blocks": 3}},
    "flap-ls": {"method": {"name": "flap", "metric": "WIFV", "structure": "AL-AM",
                           "reconstruct": "least_squares"}, "target": {"params_ratio": 0.2}},
    "slimgpt": {"method": {"name": "slimgpt"}, "target": {"params_ratio": 0.2}},
    "puzzle": {"method": {"name": "puzzle", "mlp_widths": [0.5], "verify": 2,
                          "reconstruct_damp": 1.0},
               "target": {"params_ratio": 0.2, "kv_cache_ratio": 0.3}},
    "taylor-lora": {"method": {"name": "taylor", "layer_start": 1, "layer_end": 3},
                    "target": {"params_ratio": 0.2}, "recover": LORA},
    "flap-kd": {"method": {"name": "flap", "metric": "WIFV", "structure": "AL-AM"},
                "target": {"params_ratio": 0.2}, "recover": KD},
    "gguf": {"method": {"name": "manual", "remove": ["layers.0.attn", "layers.1.mlp",
                                                     "layers.2"]},
             "export": {"format": "gguf", "outtype": "f32"}},
}
SUMMARY_FIGURES = ("eval_loss_before", "train_loss", "eval_loss_after", "eval_losses", "steps",
                   "kl_before", "kl_after", "perplexity_before", "perplexity_after")


def recipe(root: Path, name: str, seed: int) -> Path:
    """The tiny recipe of ``name`` (the GGUF pipeline needs a BPE tokenizer llama.cpp knows)."""
    text = root / "text.txt"
    if not text.exists():
        text.write_text("\n\n".join(f"Paragraph {i}. " + TEXT * (1 + i % 3) for i in range(30)))
    sections = dict(PIPELINES[name])
    if name == "gguf":
        from gguf_models import VOCAB, bpe_tokenizer
        from helpers import tiny_model

        model = root / "tiny-bpe"
        if not model.exists():
            tiny_model("llama", seed, vocab_size=VOCAB).save_pretrained(model)
            bpe_tokenizer().save_pretrained(model)
    else:
        model = root / "tiny"
        if not model.exists():
            save_tiny(model, "llama", seed)
    if "recover" in sections:
        sections["recover"] = {"dataset": str(text), **sections["recover"]}
    return write_recipe(
        root / f"{name}.yaml", model, text,
        calibration={"nsamples": 4, "seqlen": 24, "batch_size": 2, "seed": seed},
        eval={"perplexity": {"datasets": [str(text)], **EVAL["perplexity"]}},
        export=sections.pop("export", {"dtype": "float32"}), **sections)


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if "second" not in k and "mtime" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _tensor_digests(path: Path) -> dict:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return {key: hashlib.sha256(handle.get_tensor(key).contiguous().view(-1).view(
            torch.uint8).numpy().tobytes()).hexdigest()[:16] for key in handle.keys()}


def outcome(project: Path) -> dict:
    """What a finished run produced, minus wall-clock times: one key per compared figure."""
    result = {}
    plan = project / "search" / "plan.json"
    if plan.exists():
        result["plan.json"] = _without_timings(json.loads(plan.read_text()))
    for folder in ("pruned", "recovered/model", "recovered/adapter", "export"):
        for file in sorted((project / folder).glob("*.safetensors")):
            for key, digest in _tensor_digests(file).items():
                result[f"{file.relative_to(project).as_posix()}:{key}"] = digest
    for file in sorted((project / "export").rglob("*")):
        name = file.relative_to(project).as_posix()
        if file.name == ".prunectl-export":  # the export's manifest records mtimes
            result[name] = _without_timings(json.loads(file.read_text()))
        elif file.is_file():
            result[name] = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    for file in sorted((project / "eval").glob("*/perplexity-*.json")):
        result[file.relative_to(project).as_posix()] = json.loads(file.read_text())["perplexity"]
    summary = project / "recovered" / "summary.json"
    if summary.exists():
        figures = json.loads(summary.read_text())
        result.update({f"recover.{k}": figures[k] for k in SUMMARY_FIGURES if k in figures})
    steps = json.loads((project / "state.json").read_text())["steps"]
    result.update({f"status.{name}": record["status"] for name, record in steps.items()})
    return result


def differences(got: dict, expected: dict) -> list[str]:
    return sorted(key for key in got.keys() | expected.keys() if got.get(key) != expected.get(key))


def sweep(name: str, root: Path, points: int, retries: int, seed: int, log) -> dict:
    """The reference run of ``name``, then one killed-and-resumed run per kill point."""
    work = root / name
    work.mkdir()
    path = recipe(root, name, seed)
    args = lambda project: ["run", "-p", project, "-r", path, "--quiet"]  # noqa: E731
    started = time.monotonic()
    writes_log = work / "writes.txt"
    reference = prunectl(*args(work / "ref"), env=record_env(work / "hook", work / "ref",
                                                             writes_log))
    if reference.returncode != 0:
        raise SystemExit(f"{name}: the reference run failed:\n{reference.stderr[-3000:]}")
    expected = outcome(work / "ref")
    writes = writes_log.read_text().splitlines()
    chosen = sorted({max(1, round(len(writes) * (k + 1) / (points + 1))) for k in range(points)})
    result = {"writes": len(writes), "compared": len(expected), "points": [], "fired": 0,
              "identical": 0, "differences": 0}
    for index, nth in enumerate(chosen):
        when = ("before", "after")[index % 2]
        project = work / f"kill-{nth}"
        killed = prunectl(*args(project), env=kill_env(work / "hook", project, "*", when, nth))
        point = {"nth": nth, "write": writes[nth - 1], "when": when,
                 "fired": killed.returncode == -9, "reruns": 0}
        if killed.returncode not in (0, -9):
            point["error"] = killed.stderr[-2000:]
        rc = killed.returncode
        while rc != 0 and point["reruns"] < retries:
            again = prunectl(*args(project))
            point["reruns"] += 1
            rc = again.returncode
            if rc != 0:
                point["error"] = again.stderr[-2000:]
        point["finished"] = rc == 0
        point["differences"] = differences(outcome(project), expected) if rc == 0 else ["no exit 0"]
        result["fired"] += point["fired"]
        if point["fired"]:
            result["identical"] += not point["differences"]
            result["differences"] += bool(point["differences"])
        result["points"].append(point)
        log(f"  {name}: kill {when} write {nth}/{len(writes)} ({point['write']}): "
            f"{'fired' if point['fired'] else 'not fired'}, {point['reruns']} re-run(s), "
            f"{'identical' if not point['differences'] else point['differences'][:5]}")
    result["seconds"] = round(time.monotonic() - started)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help=f"comma-separated, of {', '.join(PIPELINES)}")
    parser.add_argument("--points", type=int, default=3, help="kill points per pipeline")
    parser.add_argument("--seed", type=int, default=0, help="model weights and calibration")
    parser.add_argument("--retries", type=int, default=3, help="re-runs after a kill, at most")
    parser.add_argument("--jobs", type=int, default=2, help="pipelines swept at the same time")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", type=Path,
                        help="work here and keep the projects (default: a temporary folder, "
                             "removed)")
    options = parser.parse_args()
    names = [n.strip() for n in options.pipelines.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown or options.points < 1:
        parser.error(f"unknown pipelines {unknown}, expected some of {', '.join(PIPELINES)}"
                     if unknown else "--points must be at least 1")
    root = options.keep or Path(tempfile.mkdtemp(prefix="kill-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    for name in names:  # the shared models and recipes, before the workers start
        recipe(root, name, options.seed)
    started = time.monotonic()
    with ThreadPoolExecutor(options.jobs) as pool:
        results = dict(zip(names, pool.map(
            lambda n: sweep(n, root, options.points, options.retries, options.seed,
                            lambda line: print(line, flush=True)), names)))
    for name, figures in results.items():
        print(f"{name:12} kills fired {figures['fired']}/{len(figures['points'])}, "
              f"resumed identical {figures['identical']}, differences {figures['differences']} "
              f"({figures['writes']} writes, {figures['compared']} figures compared, "
              f"{figures['seconds']} s)")
    fired = sum(f["fired"] for f in results.values())
    identical = sum(f["identical"] for f in results.values())
    print(f"total: {identical} of {fired} kills resumed identical, "
          f"{round(time.monotonic() - started)} s")
    if not options.keep:
        shutil.rmtree(root)
    if options.json:
        options.json.write_text(json.dumps({"seed": options.seed, "points": options.points,
                                            "pipelines": results}, indent=1) + "\n")
    return 0 if identical == fired and all(
        p["finished"] for f in results.values() for p in f["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
