"""Measuring GGUF exports in llama.cpp: perplexity from the same token ids as transformers, prompt
and decode speed, and file bytes, for the report's perplexity-per-byte curve.

The engine is node-llama-cpp's prebuilt CPU build of llama.cpp (no compiler needed):
``NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install node-llama-cpp @node-llama-cpp/linux-x64`` in a
folder outside the project, then ``PRUNECTL_NODE_LLAMA_CPP=<that folder>``.  ``llama_cpp_engine.mjs``
(next to this file) is run by ``node`` once per file and question, with
``getLlama({gpu: false, build: "never"})``, so nothing is compiled or downloaded.

Perplexity: the evaluation windows ``eval.perplexity`` gives transformers (non-overlapping
``seqlen`` windows of the cached token ids, ``max_windows`` first), each scored from llama.cpp's
raw logits: ``-log p(next) = log sum exp(logits - max) + max - logit(next)``.

Speed: per file one warm-up run, then ``repeats`` rounds that time every file once in turn
(interleaved, so a change in machine load hits all files alike); a run evaluates a prompt of
``prompt`` tokens in one batch, then decodes ``gen`` tokens one at a time.  Wall and CPU seconds
of the engine process are both kept: CPU time is what a shared machine does not distort.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from prunectl.errors import UserError

ENGINE_ENV = "PRUNECTL_NODE_LLAMA_CPP"
DRIVER = Path(__file__).with_name("llama_cpp_engine.mjs")
HOW_TO_GET = (f"install node-llama-cpp's prebuilt engine in a folder outside the project "
              "(NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install node-llama-cpp "
              f"@node-llama-cpp/linux-x64) and set {ENGINE_ENV} to that folder")


def find_engine() -> Path:
    """The folder node-llama-cpp is installed in, or a one-line error saying how to get it."""
    folder = os.environ.get(ENGINE_ENV)
    if not folder:
        raise UserError(f"eval.llama_cpp needs a llama.cpp engine; {HOW_TO_GET}")
    path = Path(folder).expanduser()
    if not (path / "node_modules" / "node-llama-cpp").is_dir():
        raise UserError(f"{ENGINE_ENV}={folder} holds no node_modules/node-llama-cpp; {HOW_TO_GET}")
    if shutil.which("node") is None:
        raise UserError("eval.llama_cpp runs node-llama-cpp with `node`, which is not on PATH; "
                        "install Node.js 20 or later")
    return path


def _ask(engine: Path, request: dict) -> dict:
    done = subprocess.run(["node", str(DRIVER), str(engine)], input=json.dumps(request),
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        said = next((line for line in lines if "Error" in line), lines[-1])
        raise UserError(f"llama.cpp (node-llama-cpp) failed on {request['model']}: {said}")
    return json.loads(done.stdout)


def perplexity(engine: Path, model: Path, windows: list[list[int]], threads: int = 1) -> dict:
    """Perplexity of the GGUF file ``model`` over ``windows`` (token ids), as transformers'
    ``evaluation.perplexity`` counts it: every token after a window's first is scored."""
    import math

    answer = _ask(engine, {"model": str(model), "threads": threads, "nll": windows})
    nll, scored = sum(answer["nll"]), sum(answer["tokens"])
    return {"perplexity": math.exp(nll / scored), "nll": nll / scored, "tokens_scored": scored,
            "windows": len(windows)}


def _quartiles(values: list[float]) -> dict:
    if len(values) == 1:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def speed(engine: Path, files: dict[str, Path], prompt: list[int], gen: int, repeats: int,
          threads: int = 1) -> dict[str, dict]:
    """Per file: median and quartiles over ``repeats`` interleaved rounds of the prompt and
    decode tokens/s, by wall clock and by CPU time, after one warm-up run each."""
    request = {"threads": threads, "speed": {"prompt": prompt, "gen": gen}}
    for path in files.values():  # warm-up: page cache, engine start, CPU kernels chosen
        _ask(engine, {**request, "model": str(path)})
    runs: dict[str, list[dict]] = {name: [] for name in files}
    for _ in range(repeats):
        for name, path in files.items():
            runs[name].append(_ask(engine, {**request, "model": str(path)}))
    out = {}
    for name, rows in runs.items():
        out[name] = {"prompt_tokens": len(prompt), "gen_tokens": gen, "repeats": repeats,
                     "threads": threads, "rounds": {}}
        for phase, count in (("prompt", len(prompt)), ("decode", gen)):
            for clock, key in (("wall", f"{phase}_s"), ("cpu", f"{phase}_cpu_s")):
                rates = [count / max(r[key], 1e-9) for r in rows]
                out[name][f"{phase}_tok_s_{clock}"] = _quartiles(rates)
                out[name]["rounds"][f"{phase}_tok_s_{clock}"] = rates
    return out


def ratios(pruned: dict, dense: dict) -> dict:
    """Speed-ups against the dense file: the ratio of each round's rates (the two files ran
    back to back in it), median and quartiles over the rounds."""
    return {key: _quartiles([p / d for p, d in zip(rates, dense["rounds"][key], strict=True)])
            for key, rates in pruned["rounds"].items()}


def saved_results(project_root: Path) -> list[dict]:
    """Every ``eval/<role>/llama-cpp-<outtype>.json`` of a project."""
    rows = []
    for path in sorted(Path(project_root, "eval").glob("*/llama-cpp-*.json")):
        rows.append(json.loads(path.read_text()))
    return rows


def report_section(project_root: Path, eval_dir: Path) -> tuple[list[str], str | None]:
    """The report's llama.cpp table and its perplexity-per-byte plot (None without results)."""
    rows = saved_results(project_root)
    if not rows:
        return [], None
    from prunectl.evaluation.plots import perplexity_per_byte

    datasets = sorted({d for r in rows for d in r["perplexity"]})
    names = {d: Path(d).stem if "/" in d else d for d in datasets}  # a file: its name
    lines = ["## In llama.cpp (GGUF)", "",
             "| model | type | MiB | " + " | ".join(f"ppl {names[d]}" for d in datasets)
             + " | prompt tok/s (CPU) | decode tok/s (CPU) | fallbacks |",
             "| --- | --- | ---: |" + " ---: |" * len(datasets) + " ---: | ---: | ---: |"]
    for r in rows:
        s = r.get("speed") or {}
        rate = {k: f"{s[k]['median']:.1f}" if k in s else "" for k in
                ("prompt_tok_s_cpu", "decode_tok_s_cpu")}
        ppl = " | ".join(f"{r['perplexity'][d]['perplexity']:.3f}" if d in r["perplexity"]
                         else "" for d in datasets)
        lines.append(f"| {r['model']} | {r['outtype']} | {r['bytes'] / 2**20:.1f} | {ppl} | "
                     f"{rate['prompt_tok_s_cpu']} | {rate['decode_tok_s_cpu']} | "
                     f"{len(r.get('fallbacks') or {})} |")
    png = eval_dir / "perplexity_per_byte.png"
    points = {}
    for r in rows:
        for d in datasets[:1]:
            if d in r["perplexity"]:
                points.setdefault(r["model"], []).append(
                    {"bytes": r["bytes"], "perplexity": r["perplexity"][d]["perplexity"],
                     "label": r["outtype"]})
    perplexity_per_byte(points, png, f"Perplexity ({names[datasets[0]]}) vs GGUF file size")
    lines += ["", f"![perplexity per byte]({png.name})", ""]
    return lines, png.name
