"""A run's trained model (LoRA merged into its base, or its fully fine-tuned layers) saved as a
plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolroute.train.run_dir import RunDir, RunManifest
from toolroute.train.weights import load_trained_model


class MergeError(RuntimeError):
    pass


def merge_run(run: RunDir, manifest: RunManifest, out_dir: Path, dtype: Any) -> tuple[Any, Any]:
    """Base + the run's training -> weights in `out_dir` (safetensors, config, tokenizer, chat template)."""
    from transformers import AutoTokenizer

    try:
        merged = load_trained_model(run, manifest, dtype)
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer))
    # The template the router was trained with goes into the HF directory, and from there
    # through the converter into the GGUF (`tokenizer.chat_template`).
    tokenizer.chat_template = manifest.chat_template
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return merged, tokenizer
