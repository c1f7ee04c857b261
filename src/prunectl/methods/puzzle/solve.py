"""The exact solve: one attention and one MLP variant per layer, the least summed score within
every budget — a multiple-choice knapsack written as a MILP (``scipy.optimize.milp``, HiGHS).

Variables: a binary per (block, option); each block takes exactly one option; each budget is
one row ``sum(cost) <= cap``.  ``mip_rel_gap = 0`` makes the optimum exact; HiGHS's feasibility
tolerance could still let a row pass by a few parameters, so every solution is re-checked in
integers and a violating one is cut off and the solve repeated.  The next-best solution that
differs from earlier ones in at least ``d`` block choices is one more row per earlier solution
(a no-good cut: ``sum of its chosen variables <= blocks - d``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from prunectl.errors import UserError
from prunectl.methods.puzzle.costs import Costs


class Infeasible(UserError):
    """No combination of variants meets the budgets (or differs enough from earlier ones)."""


@dataclass(frozen=True)
class Choice:
    """Column indices into the library per layer: ``attn[l]`` (kept KV groups) and ``mlp[l]``
    (the MLP width option), and the summed score."""

    attn: tuple[int, ...]
    mlp: tuple[int, ...]
    score: float

    @property
    def key(self) -> str:
        """What a journal record is keyed by."""
        return ",".join(map(str, self.attn)) + "|" + ",".join(map(str, self.mlp))

    def differences(self, other: Choice) -> int:
        """Blocks whose option differs."""
        return sum(a != b for a, b in zip(self.attn + self.mlp, other.attn + other.mlp))


def solve(attn_score: np.ndarray, mlp_score: np.ndarray, costs: Costs, caps: dict[str, int],
          exclude: list[Choice] = (), diversity: int = 1,
          allowed: tuple[np.ndarray, np.ndarray] | None = None) -> Choice:
    """The best :class:`Choice` whose totals (``costs.total``) are at most ``caps[kind]`` for
    every kind given, differing from each of ``exclude`` in at least ``diversity`` blocks;
    ``allowed`` (boolean masks shaped like the scores) restricts the options.  Raises
    :class:`Infeasible` when there is none."""
    layers, n_attn = attn_score.shape
    n_mlp = mlp_score.shape[1]
    n = layers * (n_attn + n_mlp)
    objective = np.concatenate([attn_score.ravel(), mlp_score.ravel()]).astype(np.float64)
    one = np.zeros((2 * layers, n))
    for l in range(layers):
        one[l, l * n_attn:(l + 1) * n_attn] = 1
        one[layers + l, layers * n_attn + l * n_mlp:layers * n_attn + (l + 1) * n_mlp] = 1
    rows, lower, upper = [one], [np.ones(2 * layers)], [np.ones(2 * layers)]
    for kind, cap in caps.items():
        row = np.concatenate([costs.attn[kind].ravel(), costs.mlp[kind].ravel()])
        # every total is a multiple of the row's gcd: dividing by it (the cap rounded down)
        # keeps the row exact and gives HiGHS small integers (KV bytes: 0 .. G per layer)
        unit = max(int(np.gcd.reduce(row)), 1)
        rows.append((row // unit)[None].astype(np.float64))
        lower.append(np.array([-np.inf]))
        upper.append(np.array([float((cap - costs.fixed(kind)) // unit)]))
    high = np.ones(n) if allowed is None else np.concatenate(
        [allowed[0].ravel(), allowed[1].ravel()]).astype(np.float64)
    cuts = [(c, diversity) for c in exclude]
    while True:
        a = np.vstack(rows + [_cut(c, d, layers, n_attn, n_mlp, n) for c, d in cuts])
        lo = np.concatenate(lower + [np.array([-np.inf])] * len(cuts))
        hi = np.concatenate(upper + [np.array([2 * layers - d], dtype=float) for _, d in cuts])
        with _no_c_stdout():
            result = milp(objective, integrality=np.ones(n), bounds=Bounds(0, high),
                          constraints=LinearConstraint(a, lo, hi), options={"mip_rel_gap": 0})
        if result.x is None:
            raise Infeasible(_infeasible(caps, costs, bool(exclude), diversity))
        x = np.round(result.x).astype(int)
        attn = tuple(int(np.argmax(x[l * n_attn:(l + 1) * n_attn])) for l in range(layers))
        base = layers * n_attn
        mlp = tuple(int(np.argmax(x[base + l * n_mlp:base + (l + 1) * n_mlp]))
                    for l in range(layers))
        score = float(sum(attn_score[l, attn[l]] + mlp_score[l, mlp[l]] for l in range(layers)))
        choice = Choice(attn, mlp, score)
        if all(costs.total(k, list(attn), list(mlp)) <= cap for k, cap in caps.items()):
            return choice
        cuts.append((choice, 1))  # passed only within HiGHS's tolerance: cut it off


@contextlib.contextmanager
def _no_c_stdout():
    """HiGHS 1.12 (scipy 1.17) prints a stray debug line to the C stdout whatever its options
    (ERGO-Code/HiGHS#2783), which would corrupt ``--json`` output: send fd 1 to /dev/null
    while it solves."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _cut(choice: Choice, d: int, layers: int, n_attn: int, n_mlp: int, n: int) -> np.ndarray:
    row = np.zeros((1, n))
    for l in range(layers):
        row[0, l * n_attn + choice.attn[l]] = 1
        row[0, layers * n_attn + l * n_mlp + choice.mlp[l]] = 1
    return row


def _infeasible(caps: dict[str, int], costs: Costs, excluded: bool, diversity: int) -> str:
    asked = ", ".join(f"{k} <= {cap:,} of {costs.dense[k]:,}" for k, cap in caps.items())
    if excluded:
        return (f"no further solution within {asked} differs from the earlier ones in "
                f"{diversity} block choices; lower method.diversity or method.verify")
    return (f"no combination of the library's variants meets {asked}; relax the target "
            "(smaller target ratios) or add narrower method.mlp_widths")


def check_feasible(costs: Costs, caps: dict[str, int]) -> None:
    """Raise :class:`Infeasible` when even the cheapest choice (every block removed: column 0
    is the least of every kind) exceeds a cap; needs the costs alone, not the scores."""
    layers = costs.attn["params"].shape[0]
    if any(costs.total(kind, [0] * layers, [0] * layers) > cap for kind, cap in caps.items()):
        raise Infeasible(_infeasible(caps, costs, False, 0))


def candidates(attn_score: np.ndarray, mlp_score: np.ndarray, costs: Costs,
               caps: dict[str, int], count: int, diversity: int,
               allowed: tuple[np.ndarray, np.ndarray] | None = None) -> list[Choice]:
    """The optimum, then up to ``count - 1`` next-best solutions each differing from all
    earlier ones in at least ``diversity`` blocks (fewer when the budgets allow no more)."""
    found = [solve(attn_score, mlp_score, costs, caps, allowed=allowed)]
    while len(found) < count:
        try:
            found.append(solve(attn_score, mlp_score, costs, caps, found, diversity, allowed))
        except Infeasible:
            break
    return found
