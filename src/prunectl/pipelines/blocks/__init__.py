"""The block-unit runner: a model cut into attention / MLP units run from cached boundary states
(``runner``, with :class:`~.runner.Units`, what a method gets as ``inputs.units``), the prefix
cache of those states (``cache``) and the NLL lower bound that prunes candidates early
(``bound``).  Shared by the block search, puzzle's library scores and puzzle's verification.
"""
