"""SlimGPT: OBS-driven structured pruning with sequential compensation.  See ``method.py``."""

from prunectl.methods.slimgpt.method import SlimGPTConfig, SlimGPTMethod

__all__ = ["SlimGPTConfig", "SlimGPTMethod"]
