"""Merge, convert to GGUF, quantize and embed the router (needs the `train` extra)."""
