"""How long ``prunectl status`` of a finished project takes, against ``python -c pass``.

Shell loops poll ``status``; it reads JSON files and must not pay torch's import (17-24 s on a
busy 2-core machine).  This makes a finished project from a tiny random Llama (hidden 64, every
step, a few seconds), runs ``prunectl status -p PROJECT`` and ``python -c pass`` alternately
``--repeats`` times in fresh processes, and prints the medians and their ratio.

    python bench/status_speed.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
model: {{path: {model}, dtype: float32, device: cpu}}
calibration: {{dataset: {text}, nsamples: 2, seqlen: 32}}
method: {{name: manual, remove: [layers.1]}}
eval: {{perplexity: {{datasets: [{text}], seqlen: 64, batch_size: 2, max_windows: 2}}}}
export: {{dtype: float32}}
"""


def finished_project(root: Path) -> Path:
    """A tiny Llama pruned, evaluated and exported: every step done."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from helpers import save_tiny

    model = save_tiny(root / "tiny")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: " + "words to read. " * 30 for i in range(40)))
    (root / "recipe.yaml").write_text(RECIPE.format(model=model, text=text))
    project = root / "proj"
    subprocess.run([sys.executable, "-m", "prunectl", "run", "-p", str(project), "-r",
                    str(root / "recipe.yaml"), "-q"], check=True)
    return project


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        project = finished_project(Path(folder))
        status = [sys.executable, "-m", "prunectl", "status", "-p", str(project)]
        bare = [sys.executable, "-c", "pass"]
        times: dict[str, list[float]] = {"status": [], "python -c pass": []}
        for _ in range(args.repeats):
            times["status"].append(seconds(status))
            times["python -c pass"].append(seconds(bare))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({"repeats": args.repeats, "cpus": os.cpu_count(),
                      "median_s": {k: round(v, 3) for k, v in medians.items()},
                      "ratio": round(medians["status"] / medians["python -c pass"], 1)}))


if __name__ == "__main__":
    main()
