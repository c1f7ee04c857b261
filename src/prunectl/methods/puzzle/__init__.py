"""``method: puzzle`` — a heterogeneous architecture search from a library of scored block
variants (Puzzle, Bercovich et al., arXiv 2411.19146; ModelOpt's Puzzletron).

The library (``score`` step) is a set of tensors in ``scores/scores.safetensors``; ``L`` layers,
``G`` KV groups per layer (a group is a KV head with its query heads; MHA: one head), ``C`` MLP
channels, ``W`` MLP width options:

- ``attn.order`` int64 [L, G]: KV groups, most important first; the variant that keeps ``g``
  groups keeps ``attn.order[l, :g]`` (variants are nested).
- ``attn.score`` float64 [L, G + 1]: column ``g`` scores the variant keeping ``g`` groups
  (``g = 0``: the attention block removed; ``g = G``: dense, score 0).
- ``mlp.order`` int64 [L, C]: channels, most important first.
- ``mlp.channels`` int64 [L, W]: kept channels of each width option, ascending, from 0 (the MLP
  block removed) to ``C`` (dense).
- ``mlp.score`` float64 [L, W]: the score of each width option (dense: 0).

A score is the damage of that one variant in the otherwise dense model (lower is better).  The
``search`` step turns scores and the cost model's costs into a plan by an exact MILP.
"""

