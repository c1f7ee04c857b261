"""The block-unit runner: a model cut into attention / MLP units run from cached boundary states
(``runner``), the prefix cache of those states (``cache``) and the NLL lower bound that prunes
candidates early (``bound``).  Shared by the block search and puzzle's library scores.
"""
