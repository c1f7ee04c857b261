"""Calibration pipelines: how calibration data reaches a method, one module per kind.

A method names the kind it needs (``Method.calibration``), which selects a registered pipeline
(:mod:`.registry`); the steps hand the method its inputs (:mod:`prunectl.methods.inputs`) as that
pipeline says, and the passes over the model live here, not inside methods:

- ``none`` — data-free: no tokens, the weights alone (``magnitude``, ``mag-sp``, ``manual``);
- ``tokens`` — the token windows as they are; :mod:`.blocks` is the block-unit runner with its
  prefix cache and NLL bound (the block search, puzzle's library scores);
- ``layer_inputs`` — :mod:`.layers`: windows pushed through one decoder layer at a time on cached
  inputs (FLAP / wanda-sp statistics, ShortGPT's Block Influence, the sequential reconstruction
  and SlimGPT on a pruned and a dense stream);
- ``gradients`` — :mod:`.gradients`: LM-loss gradients accumulated in fp32 (``taylor``).
"""
