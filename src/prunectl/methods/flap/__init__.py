"""FLAP and its structured baselines (wanda-sp, mag-sp): width pruning of heads and MLP channels.

``method`` wires the shared width machinery (:mod:`prunectl.methods.width`: statistics, metrics,
selection, compensation) into the step hooks.
"""

from prunectl.methods.flap.method import FlapMethod, MagSPMethod, WandaSPMethod

__all__ = ["FlapMethod", "MagSPMethod", "WandaSPMethod"]
