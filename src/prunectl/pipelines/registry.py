"""Which pipeline a method's ``calibration`` kind selects, and what it hands the method.

The steps never test a kind by name: ``calibrate`` asks the selected :class:`Pipeline` whether
to make calibration windows, ``score`` / ``search`` / ``apply`` get the method's tokens from it
(:meth:`Pipeline.tokens`), and the method's :class:`~prunectl.methods.inputs.Inputs` carry the
kind, so ``inputs.layers`` / ``inputs.units`` / ``inputs.gradients`` are the pass objects this
pipeline builds (:meth:`Pipeline.layers`, :meth:`Pipeline.units`, :meth:`Pipeline.gradients`).
The passes themselves are the modules beside this one: ``layers`` (``layer_inputs``), ``blocks``
(the block-unit runner; ``tokens``), ``gradients`` (``gradients``); ``none`` is data-free.  A
new calibration need is one module, one method here and one entry in :data:`PASSES`.  The
pass modules are imported when a pass is built: a recipe's method is resolved (``Method.pipeline``)
without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunectl.modeling.adapters import Adapter
    from prunectl.pipelines.blocks.runner import Units
    from prunectl.pipelines.gradients import Gradients
    from prunectl.pipelines.layers import Layers

#: the passes each kind provides: its own, and for ``tokens`` and ``gradients`` the layer pass
#: too, on which a width method's ``method.reconstruct`` (FLAP's bias statistics, the
#: least-squares and BLD refits) runs over the same windows
PASSES: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "layer_inputs": frozenset({"layers"}),
    "tokens": frozenset({"units", "layers"}),
    "gradients": frozenset({"gradients", "layers"}),
}


class PassNotProvided(RuntimeError):
    """A method asked its inputs for a pass its declared ``calibration`` kind does not provide:
    a bug in the method (declare the kind that provides it), not in the recipe."""


@dataclass(frozen=True)
class Pipeline:
    kind: str
    #: True when the method reads calibration windows (``calibrate`` makes them)
    reads_tokens: bool
    #: the passes it builds: ``layers``, ``units``, ``gradients``
    passes: frozenset[str]

    def tokens(self, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The windows a method's hooks get: ``load()``, or none for a data-free method."""
        import torch

        return load() if self.reads_tokens else torch.empty(0, 0, dtype=torch.long)

    def _provide(self, name: str, what: str) -> None:
        if name not in self.passes:
            kinds = " or ".join(k for k, passes in PASSES.items() if name in passes)
            raise PassNotProvided(f"calibration {self.kind!r} provides no {what} "
                                  f"(inputs.{name}); a method that runs it declares "
                                  f"calibration {kinds}")

    def layers(self, adapter: Adapter, tokens: torch.Tensor, batch_size: int) -> Layers:
        """The layer pass over ``tokens`` (:mod:`.layers`)."""
        from prunectl.pipelines.layers import Layers

        self._provide("layers", "layer pass")
        return Layers(adapter, tokens, batch_size)

    def units(self, model: nn.Module, tokens: torch.Tensor, batch_size: int) -> Units:
        """The block-unit runner on ``tokens`` (:mod:`.blocks`)."""
        from prunectl.pipelines.blocks.runner import Units

        self._provide("units", "block-unit runner")
        return Units(model, tokens, batch_size)

    def gradients(self, model: nn.Module, tokens: torch.Tensor) -> Gradients:
        """The gradient pass over ``tokens`` (:mod:`.gradients`)."""
        from prunectl.pipelines.gradients import Gradients

        self._provide("gradients", "gradient pass")
        return Gradients(model, tokens)


PIPELINES: dict[str, Pipeline] = {kind: Pipeline(kind, kind != "none", passes)
                                  for kind, passes in PASSES.items()}
#: what inputs built by hand (tests, benches: no ``calibration`` kind named) get: every pass
BY_HAND = Pipeline("by hand", True, frozenset().union(*PASSES.values()))


def pipeline(kind: str) -> Pipeline:
    """The registered pipeline of ``kind`` (a method's ``calibration``)."""
    return PIPELINES[kind]
