"""Text that ships with Python itself, for the offline demo and air-gapped smoke tests.

The standard library's ``pydoc_data.topics`` holds the language reference's topic pages (about
465k characters of English technical prose).  They are split deterministically by topic into a
calibration part and a disjoint evaluation part, so a demo never evaluates on text it calibrated
on.  This is a convenience for machines without the Hugging Face hub, not a benchmark: publish
numbers on WikiText-2 or C4.
"""

from __future__ import annotations

from prunectl.errors import UserError

NAME = "pydoc-topics"
#: every EVAL_EVERY-th topic (sorted by name) is held out for evaluation
EVAL_EVERY = 4
SPLITS = {"train": "calibration", "calibration": "calibration", "test": "evaluation",
          "evaluation": "evaluation", "validation": "evaluation"}


def pydoc_topics(split: str) -> list[str]:
    """Topic pages of the requested part: ``calibration`` (train) or ``evaluation`` (test)."""
    from pydoc_data.topics import topics

    if split not in SPLITS:
        raise UserError(
            f"dataset {NAME} has no split '{split}'; use one of: {', '.join(sorted(SPLITS))}"
        )
    held_out = SPLITS[split] == "evaluation"
    names = sorted(topics)
    return [topics[n] for i, n in enumerate(names) if (i % EVAL_EVERY == EVAL_EVERY - 1) == held_out]
