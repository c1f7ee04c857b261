"""Step hooks that give a method without FLAP's pipeline (``slimgpt``, ``taylor``,
``magnitude``, ``puzzle``) the ``method.reconstruct`` keys: ``bias`` collects FLAP's input
means in ``calibrate``; ``least_squares`` and ``bld`` run the sequential pass in ``apply``."""

from __future__ import annotations

from prunectl.methods.width.collect import collect_statistics
from prunectl.methods.width.compensation import plan_biases
from prunectl.methods.width.reconstruct import REFITS, reconstruction_biases


class ReconstructHooks:
    """Mixed into a :class:`~prunectl.methods.base.Method` whose config has
    :class:`~prunectl.methods.width.reconstruct.ReconstructOptions`."""

    @property
    def uses_statistics(self) -> bool:
        return self.config.reconstruct == "bias"

    @property
    def apply_uses_tokens(self) -> bool:
        return self.config.reconstruct in REFITS

    def statistics(self, inputs):
        if not self.uses_statistics:
            return {}
        return collect_statistics(inputs.layers, inputs.ui)

    def apply(self, inputs, plan, stats):
        from prunectl.modeling.surgery import apply_plan

        biases = reconstruction_biases(self.config, inputs, plan, stats, plan_biases)
        return apply_plan(inputs.model, plan, biases=biases)
