"""What a pruned model is written as: ``hf`` (Hugging Face directories: plain or the pruned format
with ``per_layer_config`` and ``modeling_prunectl.py``) and ``gguf`` (llama.cpp files: layout,
tensors, vocabulary, writer, quantization).  The export step and the steps that save models use
it; it reads models through ``modeling`` and never imports a step."""
