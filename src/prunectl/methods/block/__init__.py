"""BlockPruner block search (arXiv 2406.10594); its nested removal order: ``methods.removal_order``."""

from prunectl.methods.block.method import BlockMethod

__all__ = ["BlockMethod"]
