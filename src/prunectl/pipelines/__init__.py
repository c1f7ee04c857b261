"""Calibration pipelines: how calibration data reaches a method, one module per kind.

A method names the kind it needs (``Method.calibration``), which selects a registered pipeline
(:mod:`.registry`); the steps hand the method its inputs (:mod:`prunectl.methods.inputs`) with
that kind, and the pipeline builds the passes over the model that the method gets there
(``inputs.layers``, ``inputs.units``, ``inputs.gradients``).  The passes live here, not inside
methods, which keep only their callbacks:

- ``none`` — data-free: no tokens, the weights alone (``magnitude``, ``mag-sp``, ``manual``);
- ``tokens`` — the token windows as they are; :mod:`.blocks` is the block-unit runner with its
  prefix cache and NLL bound (the block search, puzzle's library scores and verification);
- ``layer_inputs`` — :mod:`.layers`: windows pushed through one decoder layer at a time on cached
  inputs (FLAP / wanda-sp statistics, ShortGPT's Block Influence, REAP's expert statistics, the
  sequential reconstruction and SlimGPT on a pruned and a dense stream);
- ``gradients`` — :mod:`.gradients`: LM-loss gradients accumulated in fp32 (``taylor``).

``tokens`` and ``gradients`` provide the layer pass too: a width method's ``reconstruct`` refits
and statistics run on it.
"""
