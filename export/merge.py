"""Merge a run's LoRA adapter into its base and save a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolroute.train.bases import Base, file_sha256
from toolroute.train.run_dir import RunDir, RunManifest


class MergeError(RuntimeError):
    pass


def merge_run(run: RunDir, manifest: RunManifest, out_dir: Path, dtype: Any) -> tuple[Any, Any]:
    """Base + adapter -> merged weights in `out_dir` (safetensors, config, tokenizer, chat template)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = Base.resolve(manifest.base.spec)
    if base.kind == "gguf" and file_sha256(Path(base.location)) != manifest.base.sha256:
        raise MergeError(
            f"base {manifest.base.spec!r} ({base.location}) is not the file the run was trained on"
        )
    model = base.load_model(dtype)
    merged = PeftModel.from_pretrained(model, str(run.adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer))
    # The template the router was trained with goes into the HF directory, and from there
    # through the converter into the GGUF (`tokenizer.chat_template`).
    tokenizer.chat_template = manifest.chat_template
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return merged, tokenizer
