"""Measurement: evaluation, metrics, reports, per-file measurement and the benchmarks.

The top of the layers (grammars < runtime < train < export < bench < cli): it may import every
stage, and nothing but the CLI imports it. Its heavy dependencies (tqdm, matplotlib, torch for
the HF-side evaluation) come with the `train` extra, never the runtime install.
"""
