"""Calibration and evaluation text (named datasets, local files) and the token ids drawn from it.

``tokens`` (torch) loads on first use: recipe checks read ``sources`` alone."""

from prunectl.data.sources import NAMED, calibration_style, load_texts, render_alpaca

__all__ = [
    "NAMED",
    "calibration_style",
    "calibration_tokens",
    "encode",
    "evaluation_tokens",
    "load_texts",
    "render_alpaca",
]


def __getattr__(name: str):
    if name in ("calibration_tokens", "encode", "evaluation_tokens"):
        from prunectl.data import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'prunectl.data' has no attribute {name!r}")
