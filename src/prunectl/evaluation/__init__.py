"""Measuring models: perplexity, zero-shot tasks, speed, and the reports built from them."""
