"""Bit-identity reference for refactorings: plans, pruned weights and perplexities of every
search method on tiny random models of the test families, run through the CLI.

``python scripts/reference_results.py`` rewrites ``tests/fixtures/reference_results.json``;
``--check`` compares a fresh run against it and prints the first differences.  The test
``tests/test_reference_results.py`` runs the same comparison.  The file records the torch and
transformers versions and the CPU kernels (AVX2, AVX512, ...) it was made with: others may round
differently, so the test skips there; regenerate the file from an untouched tree to compare a
change made on them.

Every ``round_to`` (and puzzle's ``score_windows``) is set explicitly to the value the methods defaulted to when the file was
written, so a change of a default does not move the reference.  Runs use one CPU thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "reference_results.json"

#: (case, family, model overrides, method section, target); families as in tests/helpers.py
WIDTH = {"params_ratio": 0.25}
CASES = [
    ("flap", "llama", {"num_attention_heads": 8, "num_key_value_heads": 4},
     {"name": "flap", "round_to": 1}, WIDTH),
    ("flap-ls", "qwen2", {}, {"name": "flap", "reconstruct": "least_squares", "round_to": 1},
     WIDTH),
    ("flap-gemma2", "gemma2", {}, {"name": "flap", "structure": "UL-MM", "round_to": 1}, WIDTH),
    ("wanda-sp", "llama", {"num_attention_heads": 8, "num_key_value_heads": 4},
     {"name": "wanda-sp", "head_unit": "query_head", "structure": "AL-AM", "round_to": 1},
     WIDTH),
    ("mag-sp", "phi3", {}, {"name": "mag-sp", "round_to": 1}, WIDTH),
    ("magnitude", "llama", {"num_attention_heads": 8, "num_key_value_heads": 4},
     {"name": "magnitude", "round_to": 4}, WIDTH),
    ("slimgpt", "llama", {}, {"name": "slimgpt", "round_to": 1}, WIDTH),
    ("puzzle", "llama", {}, {"name": "puzzle", "verify": 2, "mlp_widths": [0.25, 0.5, 0.75], "round_to": 1,
      "score_windows": None},
     {"params_ratio": 0.2, "ratio_of": "non_embedding"}),
    ("reap", "qwen2_moe", {}, {"name": "reap"}, {"experts_ratio": 0.25}),
    ("reap-qwen3", "qwen3_moe", {}, {"name": "reap", "criterion": "frequency"},
     {"experts_ratio": 0.25}),
    ("block", "llama", {}, {"name": "block", "block_type": "mix", "batch_size": 2}, {"blocks": 3}),
    ("shortgpt", "mistral", {}, {"name": "shortgpt"}, {"blocks": 2}),
    ("taylor", "llama", {}, {"name": "taylor", "layer_start": 1, "layer_end": 4, "round_to": 1}, WIDTH),
]
STEPS = ("calibrate", "score", "search", "apply", "eval")


def _text(path: Path) -> Path:
    """The ``text_file`` fixture's text."""
    from helpers import TEXT

    path.write_text("\n\n".join(f"Paragraph {i}. " + TEXT * (1 + i % 3) for i in range(60)))
    return path


def _model(directory: Path, family: str, overrides: dict) -> Path:
    from helpers import MOE_CONFIGS, byte_tokenizer, save_tiny, tiny_moe

    if family in MOE_CONFIGS:
        tiny_moe(family, **overrides).save_pretrained(directory)
        byte_tokenizer().save_pretrained(directory)
        return directory
    return save_tiny(directory, family, **overrides)


def _recipe(path: Path, model: Path, text: Path, method: dict, target: dict) -> Path:
    from helpers import write_recipe

    return write_recipe(path, model, text, calibration={"nsamples": 6, "batch_size": 3},
                        method=method, target=target,
                        eval={"perplexity": {"datasets": [str(text)], "seqlen": 64,
                                             "batch_size": 2, "max_windows": 4},
                              "models": ["pruned"]})


def weight_digests(directory: Path) -> dict[str, str]:
    """Each saved tensor's dtype, shape and sha256 of its bytes."""
    import torch

    from prunectl.io import load_tensors

    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        for name, tensor in sorted(load_tensors(file).items()):
            raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
            found[name] = f"{tensor.dtype}{list(tensor.shape)}:{hashlib.sha256(raw).hexdigest()}"
    return found


def run_case(work: Path, case: str, family: str, overrides: dict, method: dict,
             target: dict) -> dict:
    from typer.testing import CliRunner

    from prunectl.cli import app

    folder = work / case
    folder.mkdir(parents=True)
    model = _model(folder / "model", family, overrides)
    recipe = _recipe(folder / "recipe.yaml", model, _text(folder / "text.txt"), method, target)
    project = folder / "project"
    runner = CliRunner()
    for step in STEPS:
        extra = ["-r", str(recipe)] if step == "calibrate" else []
        result = runner.invoke(app, [step, "-p", str(project), "--quiet", *extra])
        if result.exit_code != 0:
            raise RuntimeError(f"{case}: {step} failed: {result.output}")
    evals = sorted((project / "eval" / "pruned").glob("perplexity-*.json"))
    return {
        "plan": json.loads((project / "search" / "plan.json").read_text()),
        "weights": weight_digests(project / "pruned"),
        # the plan is compared above; the dense per-layer sizes (for the structure plot) came later
        "summary": {k: v for k, v in json.loads((project / "pruned" / "prunectl.json")
                                                .read_text()).items()
                    if k not in ("plan", "dense_per_layer")},
        "perplexity": {p.stem: json.loads(p.read_text())["perplexity"] for p in evals},
    }


def collect(cases=None) -> dict:
    """Every case's plan, weight digests and perplexities, computed on one thread."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as work:
            results = {c[0]: run_case(Path(work), *c) for c in CASES
                       if cases is None or c[0] in cases}
    finally:
        torch.set_num_threads(threads)
    return {"versions": versions(), "cases": results}


def versions() -> dict[str, str]:
    """What the bits depend on besides the code: the libraries and the CPU kernels torch uses."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability()}


def differences(expected: dict, got: dict, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``path: expected != got`` lines."""
    if isinstance(expected, dict) and isinstance(got, dict):
        lines = []
        for key in sorted(set(expected) | set(got)):
            if key not in got or key not in expected:
                lines.append(f"{path}/{key}: {'missing' if key not in got else 'extra'}")
            else:
                lines += differences(expected[key], got[key], f"{path}/{key}")
        return lines
    return [] if expected == got else [f"{path}: {expected!r} != {got!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the saved file")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("cases", nargs="*", help="only these cases (default: all)")
    args = parser.parse_args()
    got = collect(args.cases or None)
    if args.check:
        expected = json.loads(args.out.read_text())
        expected["cases"] = {k: v for k, v in expected["cases"].items() if k in got["cases"]}
        lines = differences(expected, got)
        print("\n".join(lines[:40]) if lines else "identical")
        return 1 if lines else 0
    args.out.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
