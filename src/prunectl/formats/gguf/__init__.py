"""GGUF for llama.cpp: ``layout`` (architecture and per-layer counts), ``tensors`` (names and
types), ``vocab`` (the tokenizer), ``writer`` (the atomic file), ``quantize`` (K-quants through
llama.cpp's own quantizer)."""
