"""Which pipeline a method's ``calibration`` kind selects, and what the steps do for it.

The steps never test a kind by name: ``calibrate`` asks the selected :class:`Pipeline` whether
to make calibration windows, and ``score`` / ``search`` / ``apply`` get the method's tokens from
it (:meth:`Pipeline.tokens`).  The passes themselves are the modules beside this one:
``layers`` (``layer_inputs``), ``blocks`` (the block-unit runner; ``tokens``), ``gradients``
(``gradients``); ``none`` is data-free.  A new calibration need is one module and one line in
:data:`PIPELINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Pipeline:
    kind: str
    #: True when the method reads calibration windows (``calibrate`` makes them)
    reads_tokens: bool

    def tokens(self, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The windows a method's hooks get: ``load()``, or none for a data-free method."""
        import torch

        return load() if self.reads_tokens else torch.empty(0, 0, dtype=torch.long)


PIPELINES: dict[str, Pipeline] = {kind: Pipeline(kind, reads_tokens=kind != "none")
                                  for kind in ("none", "tokens", "layer_inputs", "gradients")}


def pipeline(kind: str) -> Pipeline:
    """The registered pipeline of ``kind`` (a method's ``calibration``)."""
    return PIPELINES[kind]
