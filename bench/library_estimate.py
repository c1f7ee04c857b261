"""The puzzle library's own time estimate on SmolLM2-135M-Instruct with the default settings:
64 x 256 WikiText-2 validation tokens (as bench/puzzle.py), stopped right after the one line
that estimates the rest (the first layer measured), so it costs minutes, not the library.

    python bench/library_estimate.py
"""
import sys
import time
from types import SimpleNamespace

import torch
from common import SHARED_DATA, default_gguf

from prunectl import ui as ui_module
from prunectl.data import calibration_tokens
from prunectl.methods.inputs import Inputs
from prunectl.methods.puzzle.config import PuzzleConfig
from prunectl.methods.puzzle.library import build_library
from prunectl.modeling.loading import load_model


class Stop(Exception):
    pass


real = ui_module.Meter.estimate


def estimate(self):
    real(self)
    if self.estimated:
        print(f"process CPU {time.process_time():.1f} s (model load included), library wall "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        raise Stop


ui_module.Meter.estimate = estimate
torch.set_num_threads(1)
model, tok = load_model(SimpleNamespace(path=str(default_gguf())), torch.device("cpu"),
                        torch.float32)
tokens = calibration_tokens(tok, str(SHARED_DATA / "wikitext2-valid-tokens.txt"), nsamples=64,
                            seqlen=256, seed=42)
print("config", PuzzleConfig().model_dump(mode="json"), file=sys.stderr)
t0 = time.perf_counter()
try:
    build_library(Inputs(model, tokens, batch_size=8, ui=ui_module.UI(quiet=False)),
                  PuzzleConfig())
except Stop:
    pass
