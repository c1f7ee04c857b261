"""Search candidates as spans of residual *units*.

A decoder layer ``i`` holds two residual units, attention (unit ``2i``) and MLP (unit ``2i+1``).
Every candidate bypasses a contiguous span of units: ``layers.i.attn`` is ``[2i, 2i+1)``,
``layers.i.mlp`` is ``[2i+1, 2i+2)`` and a whole layer ``layers.i`` is ``[2i, 2i+2)``.  Boundary
``u`` is the residual stream entering unit ``u``; a candidate's forward starts at the boundary of
its first unit, which is what makes prefix caching work.
"""

from __future__ import annotations

from prunectl.methods.plan import parse_block_name


def candidate_names(num_layers: int, block_type: str) -> list[str]:
    """Candidates in their canonical order, which also breaks ties between equal perplexities.

    ``mix`` lists every attention block before every MLP block, as the reference's
    ``block_search.py`` does, so an exact tie resolves to the same block there and here.
    """
    attn = [f"layers.{i}.attn" for i in range(num_layers)]
    mlp = [f"layers.{i}.mlp" for i in range(num_layers)]
    table = {
        "mha": attn,
        "mlp": mlp,
        "mix": attn + mlp,
        "layer": [f"layers.{i}" for i in range(num_layers)],
    }
    return table[block_type]


def unit_span(name: str, num_layers: int) -> tuple[int, int]:
    """The half-open range of residual units a candidate bypasses."""
    index, kind = parse_block_name(name, num_layers)
    start = 2 * index + (1 if kind == "mlp" else 0)
    end = 2 * index + (1 if kind == "attn" else 2)
    return start, end


def removed_units(names: list[str], num_layers: int) -> set[int]:
    units: set[int] = set()
    for name in names:
        start, end = unit_span(name, num_layers)
        units.update(range(start, end))
    return units


def candidate_parameters(structure, name: str) -> int:
    """Parameters a candidate holds (its norm included), from the shared cost model."""
    from prunectl.modeling.cost import block_parameters

    index, kind = parse_block_name(name, len(structure.layers))
    counts = block_parameters(structure, index)
    if kind == "layer":
        return counts["attn"] + counts["mlp"]
    return counts[kind]
