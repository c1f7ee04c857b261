"""BlockPruner block search (arXiv 2406.10594) and its nested removal order."""

from prunectl.methods.block.method import BlockMethod
from prunectl.methods.block.plans import plan_for_k

__all__ = ["BlockMethod", "plan_for_k"]
