"""What a run trains and how its trained model is read back: the one reader of a run's weights.

Two methods (`TrainConfig.method`):
- `lora`: PEFT adapters on the selected layers (`lora.top_layers`), saved in `runs/NAME/adapter/`;
- `full`: every weight of the selected layers, saved as those tensors only in
  `runs/NAME/trained.safetensors` (`RunDir.trained_weights`). The token embedding (tied to the
  output head in SmolLM2 and Gemma 3), the final norm and the layers below stay the base's, so
  the file stays small and export's Q8_0 embedding is the base's embedding.

Export (`export/merge.py`) and the HF-side evaluation (`bench/hf_eval.py`) both get the trained
model from `load_trained_model`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from toolroute.runtime.files import atomic_write_bytes

if TYPE_CHECKING:
    from .run_dir import RunDir, RunManifest

Method = Literal["lora", "full"]
# A decoder layer's parameters, in every causal LM transformers builds (`model.layers.N.`).
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def selected_layers(layer_count: int, top_layers: int | None) -> range:
    """The layers a run trains: the top `top_layers`, or every one."""
    return range(max(layer_count - top_layers, 0) if top_layers else 0, layer_count)


def freeze_all_but_layers(model: Any, top_layers: int | None) -> int:
    """Full fine-tuning: only the selected layers' parameters take gradients; returns how many
    parameters train."""
    layers = set(selected_layers(model.config.get_text_config().num_hidden_layers, top_layers))
    trained = 0
    for name, parameter in model.named_parameters():
        match = _LAYER.search(name)
        parameter.requires_grad_(match is not None and int(match.group(1)) in layers)
        trained += parameter.numel() if parameter.requires_grad else 0
    if not trained:
        raise ValueError("full fine-tuning: no decoder layer parameters found to train")
    return trained


def save_trained(model: Any, run: RunDir, method: Method) -> None:
    """The run's trained weights: the adapter directory, or the trained tensors in one file."""
    if method == "lora":
        model.save_pretrained(str(run.adapter))
        return
    from safetensors.torch import save

    tensors = {
        name: parameter.detach().to("cpu").contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    atomic_write_bytes(run.trained_weights, save(tensors, metadata={"format": "toolroute-full/1"}))


def run_method(manifest: RunManifest) -> Method:
    """How the run was trained (manifests written before the option: LoRA)."""
    return manifest.config.get("method", "lora")


def load_trained_model(run: RunDir, manifest: RunManifest, dtype: Any) -> Any:
    """The base with the run's training applied: LoRA merged in, or the trained tensors loaded."""
    from .bases import Base, file_sha256

    base = Base.resolve(manifest.base.spec)
    if base.kind == "gguf" and file_sha256(Path(base.location)) != manifest.base.sha256:
        raise ValueError(
            f"base {manifest.base.spec!r} ({base.location}) is not the file the run was trained on"
        )
    model = base.load_model(dtype)
    if run_method(manifest) == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(run.adapter)).merge_and_unload()
    from safetensors.torch import load_file

    tensors = load_file(str(run.trained_weights))
    own = dict(model.named_parameters())
    if unknown := sorted(set(tensors) - set(own)):
        raise ValueError(f"{run.trained_weights}: tensors the base does not have: {unknown[:5]}")
    for name, tensor in tensors.items():
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{run.trained_weights}: {name} is {tuple(tensor.shape)}, the base's {tuple(own[name].shape)}"
            )
        own[name].data.copy_(tensor.to(own[name].dtype))
    return model
