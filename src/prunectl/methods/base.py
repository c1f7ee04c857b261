"""What every pruning method provides, step by step: the method contract.

A method is a small class configured by its own pydantic ``Config`` (the recipe's ``method``
section).  It declares what it needs: ``calibration`` (the kind of calibration data, see
:mod:`prunectl.pipelines`) and ``targets`` (the target kinds it can meet).  The steps check the
target, build the :class:`~prunectl.methods.inputs.Inputs` once and call the hooks in order; each
hook gets those inputs and the artefacts the previous steps saved, and returns plain tensors or a
:class:`Plan` that the step persists.  Pure tensor math lives beside the method in functions with
no hooks and no I/O, which is what the unit tests exercise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from prunectl.plan import Plan
from prunectl.pipelines.registry import Pipeline, pipeline
from prunectl.schema import StrictSection

if TYPE_CHECKING:  # annotations only: parsing a recipe must not import torch
    import torch
    from torch import nn

    from prunectl.methods.inputs import Calibration, Inputs


class MethodConfig(StrictSection):
    """Base of every method's recipe section: unknown keys and booleans given for numbers are
    errors."""

    name: str


class Method:
    """Default hooks; a method overrides the ones it needs."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: the calibration data it reads: ``none`` (the weights alone), ``tokens`` (windows as they
    #: are), ``layer_inputs`` (layer by layer on cached inputs), ``gradients`` (LM-loss
    #: gradients, which need the whole model on the device): it selects the registered
    #: pipeline (:mod:`prunectl.pipelines.registry`).  A property where the config decides.
    calibration: ClassVar[Calibration] = "tokens"
    #: True when ``calibrate`` runs the ``statistics`` hook and saves what it returns
    uses_statistics: ClassVar[bool] = False
    #: the target kinds the method can meet (``blocks``; ``params``: a ratio of total,
    #: non_embedding or layers, or a count; ``units``: ``ratio_of: units``; ``experts``),
    #: checked before anything runs
    targets: ClassVar[frozenset[str]] = frozenset({"blocks", "params", "units"})
    #: True when ``apply`` needs the calibration tokens in its inputs: a least-squares
    #: reconstruction runs its sequential pass there (the apply step then fingerprints the
    #: calibrate step too).
    apply_uses_tokens: ClassVar[bool] = False
    #: True when ``search --sweep`` may call ``search`` once per parameter budget and plot the
    #: plans beside ``references``
    supports_sweep: ClassVar[bool] = False
    #: ``method`` keys only ``search`` and ``apply`` read: the ``score`` step's fingerprint
    #: leaves them out, so changing one reuses the scores
    search_only_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: MethodConfig):
        self.config = config

    @property
    def pipeline(self) -> Pipeline:
        """The registered pipeline its ``calibration`` selects."""
        return pipeline(self.calibration)

    def check(self, config: Any) -> None:
        """Refuse settings this model cannot take (a block index past its last layer, say)
        before anything is computed; ``config`` is the model's Hugging Face config."""

    def check_target(self, inputs: Inputs) -> None:
        """Refuse a target this model cannot meet (no target, every block, a budget out of
        reach) before anything is computed or pinned; ``inputs.model`` is the model on the meta
        device (shapes, no weights), ``inputs.target`` the recipe's target.  The same checks
        run again in ``search``, so a method states each one once, in a helper both call."""

    def statistics(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Activation statistics from calibration tokens (``calibrate`` step)."""
        return {}

    def score(self, inputs: Inputs, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Importance scores (``score`` step); saved to ``scores/scores.safetensors``."""
        return {}

    def search(self, inputs: Inputs, scores: dict[str, torch.Tensor]) -> Plan:
        """Decide what to remove (``search`` step); saved to ``search/plan.json``."""
        raise NotImplementedError

    def references(self, inputs: Inputs, scores: dict[str, torch.Tensor]) -> dict[str, Plan]:
        """Plans for the same target by restricted searches (label -> plan), plotted beside a
        sweep's plans; their ``achieved`` holds ``params_kept`` and ``calibration_ppl``."""
        return {}

    def apply(self, inputs: Inputs, plan: Plan, stats: dict[str, torch.Tensor]) -> nn.Module:
        """Remove what the plan says, physically (``apply`` step); ``inputs.tokens`` holds the
        calibration windows only when ``apply_uses_tokens``."""
        from prunectl.modeling.surgery import apply_plan

        return apply_plan(inputs.model, plan)
