"""Training data and LoRA fine-tuning (needs the `train` extra)."""
