"""FLAP and its structured baselines (wanda-sp, mag-sp): width pruning of heads and MLP channels.

``statistics``/``metrics``/``structure``/``compensation`` are pure tensor math; ``collect`` runs
the layer-wise calibration pass; ``method`` wires them into the step hooks.
"""

from prunectl.methods.flap.method import FlapMethod, MagSPMethod, WandaSPMethod

__all__ = ["FlapMethod", "MagSPMethod", "WandaSPMethod"]
