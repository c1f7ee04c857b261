"""flap at 20% of SmolLM2's non-embedding parameters, one plan, applied with each
reconstruction named on the command line (``bld`` with its defaults): held-out perplexity on
16 x 512 WikiText-2 test tokens, calibration 64 x 256 validation tokens (bench/quality.py's
settings), and each apply's time.

    python bench/bld.py bld least_squares
"""
import copy
import dataclasses
import json
import sys
import time
from types import SimpleNamespace

import torch
from common import SHARED_DATA, default_gguf

from prunectl.data import calibration_tokens, evaluation_tokens
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.inputs import Inputs, Target
from prunectl.methods.registry import create_method, parse_method_config
from prunectl.modeling.loading import load_model
from prunectl.ui import UI

torch.set_num_threads(1)
dense, tok = load_model(SimpleNamespace(path=str(default_gguf())), torch.device("cpu"),
                        torch.float32)
tokens = calibration_tokens(tok, str(SHARED_DATA / "wikitext2-valid-tokens.txt"), nsamples=64,
                            seqlen=256, seed=42)
ev = evaluation_tokens(tok, str(SHARED_DATA / "wikitext2-raw-test.txt"))
target = Target(params_ratio=0.2, ratio_of="non_embedding")
flap = create_method(parse_method_config({"name": "flap"}))
t = time.perf_counter()
inputs = Inputs(dense, tokens, 8, target, ui=UI(quiet=False))
stats = flap.statistics(inputs)
plan = flap.search(inputs, flap.score(inputs, stats))
print(f"stats+search {time.perf_counter()-t:.0f} s", file=sys.stderr, flush=True)
for how in sys.argv[1:]:
    m = create_method(parse_method_config({"name": "flap", "reconstruct": how}))
    t, c = time.perf_counter(), time.process_time()
    pruned = m.apply(dataclasses.replace(inputs, model=copy.deepcopy(dense)), plan, stats)
    applied, cpu = time.perf_counter() - t, time.process_time() - c
    ppl = perplexity(pruned, ev, 512, 8, max_windows=16)["perplexity"]
    print(json.dumps({"reconstruct": how, "ppl": round(ppl, 2), "apply_s": round(applied, 1),
                      "apply_cpu_s": round(cpu, 1)}), file=sys.stderr, flush=True)
