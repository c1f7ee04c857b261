"""Calibration and evaluation text (named datasets, local files) and the token ids drawn from it."""

from prunectl.data.sources import NAMED, calibration_style, load_texts, render_alpaca
from prunectl.data.tokens import calibration_tokens, encode, evaluation_tokens

__all__ = [
    "NAMED",
    "calibration_style",
    "calibration_tokens",
    "encode",
    "evaluation_tokens",
    "load_texts",
    "render_alpaca",
]
