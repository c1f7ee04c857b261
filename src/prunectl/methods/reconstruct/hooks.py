"""Step hooks that give a method without FLAP's pipeline (``taylor``, ``magnitude``) the
``method.reconstruct`` keys: ``bias`` collects FLAP's input means in ``calibrate``;
``least_squares`` runs the sequential pass in ``apply``."""

from __future__ import annotations

from prunectl.methods.flap.collect import collect_statistics
from prunectl.methods.flap.compensation import plan_biases
from prunectl.methods.reconstruct.options import reconstruction_biases
from prunectl.modeling.adapters import Adapter


class ReconstructHooks:
    """Mixed into a :class:`~prunectl.methods.base.Method` whose config has
    :class:`~prunectl.methods.reconstruct.options.ReconstructOptions`."""

    @property
    def uses_statistics(self) -> bool:
        return self.config.reconstruct == "bias"

    @property
    def apply_uses_tokens(self) -> bool:
        return self.config.reconstruct == "least_squares"

    def statistics(self, run, model, tokens):
        if not self.uses_statistics:
            return {}
        return collect_statistics(Adapter(model), tokens, run.recipe.calibration.batch_size, run.ui)

    def apply(self, run, model, plan, stats, tokens=None):
        from prunectl.modeling.surgery import apply_plan

        biases = reconstruction_biases(self.config, run, model, plan, stats, tokens, plan_biases)
        return apply_plan(model, plan, biases=biases)
