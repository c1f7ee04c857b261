"""``method: puzzle``'s recipe section (shared by the library, the solver and the method)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunectl.methods.base import MethodConfig
from prunectl.methods.width.reconstruct import Reconstruct, ReconstructOptions


DEFAULT_SCORE_WINDOWS = 4


class PuzzleConfig(MethodConfig, ReconstructOptions):
    name: Literal["puzzle"] = "puzzle"
    #: how the units inside a variant are chosen: FLAP's fluctuation (WIFV), SlimGPT's greedy
    #: OBS error, or weight magnitude
    importance: Literal["flap", "slimgpt", "magnitude"] = "flap"
    #: a variant's score: KL of the final next-token distribution from the dense one (``kl``),
    #: or the block's own output error on its dense inputs (``local``: no suffix, coarser)
    score: Literal["kl", "local"] = "kl"
    #: calibration windows (the first N; null: all) the scores run on; the statistics,
    #: importance and least squares use every window (a refit needs many tokens, a ranking far
    #: fewer).  The defaults here (4 windows, three MLP widths, no verification) size the
    #: library below one block search's CPU time on SmolLM2-135M (docs/notes/puzzle.md, "Cost
    #: of the defaults"); the default 4 scores on every window when there are fewer
    score_windows: int | None = Field(DEFAULT_SCORE_WINDOWS, ge=1)
    #: kept MLP widths between "remove" and "keep", as fractions of the dense width
    mlp_widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    #: those widths snap to multiples of this; unset: modeling.alignment's default (64,
    #: smaller for small widths); 1 keeps ``round(f * channels)``
    round_to: int | None = Field(None, ge=1)
    #: solutions of the solver re-scored with true calibration perplexity (0: trust the sum;
    #: each costs a least-squares pass over every calibration window)
    verify: int = Field(0, ge=0)
    #: verified candidates differ from each other in at least this many block choices (the
    #: option of one attention or MLP block)
    diversity: int = Field(2, ge=1)
    reconstruct: Reconstruct = "least_squares"
    reconstruct_damp: float = Field(1.0, ge=0, le=10)

    @field_validator("mlp_widths")
    @classmethod
    def _fractions(cls, widths: list[float]) -> list[float]:
        if any(not 0 < w < 1 for w in widths):
            raise ValueError(f"got {widths}, expected fractions strictly between 0 and 1 "
                             "(remove and keep are always variants)")
        return sorted(set(widths))
