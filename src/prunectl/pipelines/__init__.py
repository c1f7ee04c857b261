"""Calibration pipelines: how calibration data reaches a method, one module per kind.

A method names the kind it needs (``Method.calibration``) and the steps hand it the inputs
(:mod:`prunectl.methods.inputs`); the passes over the model live here, not inside methods:

- ``none`` — data-free: no tokens, the weights alone (``magnitude``, ``mag-sp``, ``manual``);
- ``tokens`` — the token windows as they are (the block search runs its own cached forwards);
- ``layer_inputs`` — :mod:`.layers`: windows pushed through one decoder layer at a time on cached
  inputs (FLAP / wanda-sp statistics, ShortGPT's Block Influence, the sequential reconstruction
  and SlimGPT on a pruned and a dense stream);
- ``gradients`` — :mod:`.gradients`: LM-loss gradients accumulated in fp32 (``taylor``).
"""
