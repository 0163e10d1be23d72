"""toolroute: fine-tune a small language model into an offline, grammar-constrained tool router."""

__version__ = "0.1.0"
