"""Recovery after pruning: LoRA or full fine-tuning and distillation from the dense model
(:mod:`prunectl.recovery.run` drives a run)."""
