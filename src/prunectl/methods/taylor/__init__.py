"""LLM-Pruner: gradient (Taylor) importance over coupled structures.  See ``method.py``."""

from prunectl.methods.taylor.method import TaylorConfig, TaylorMethod

__all__ = ["TaylorConfig", "TaylorMethod"]
