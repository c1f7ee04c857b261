"""REAP expert pruning for mixture-of-experts models (see ``method.py``)."""

from prunectl.methods.reap.method import ReapMethod

__all__ = ["ReapMethod"]
