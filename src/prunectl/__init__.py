"""prunectl: structured pruning of large language models from one command line."""

__version__ = "0.1.0"
