"""An importance matrix from a run's own training rows, computed in Python with forward hooks.

llama.cpp weighs each weight column's rounding error by how large that column's input is in use:
the mean over tokens of the squared input activation, per input column of every matrix
multiplication. That is all `llama-imatrix` collects, and `llama_model_quantize` takes it as plain
arrays (`llama_model_imatrix_data`: tensor name, floats), so no imatrix file is needed either.

Why Python rather than building `llama-imatrix` from the pinned sdist: export already holds the
merged model in transformers, so hooks on its `nn.Linear` layers give the same statistic in
seconds, with no compiler, cmake or extra minutes in `make setup`; the GGUF tensor names come from
gguf-py's own HF -> GGUF name map, the one the converter uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

# llama.cpp's imatrix tool writes these keys into the files it quantizes; so do we.
KEY_DATASET = "quantize.imatrix.dataset"
KEY_ENTRIES = "quantize.imatrix.entries_count"
KEY_CHUNKS = "quantize.imatrix.chunks_count"


class ImatrixError(RuntimeError):
    pass


@dataclass
class ImportanceMatrix:
    """Mean squared input per column, keyed by the GGUF name of the weight it multiplies."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    texts: int = 0  # training rows evaluated (llama.cpp calls them chunks)
    tokens: int = 0
    dataset: str = ""


def model_arch(name: str) -> gguf.MODEL_ARCH:
    for arch, arch_name in gguf.MODEL_ARCH_NAMES.items():
        if arch_name == name:
            return arch
    raise ImatrixError(f"gguf-py knows no architecture named {name!r}")


def gguf_weight_names(model: Any, architecture: str, in_gguf: set[str]) -> dict[str, str]:
    """HF module name -> GGUF weight name, for every linear layer whose weight is in the GGUF file."""
    import torch

    blocks = int(model.config.num_hidden_layers)
    name_map = gguf.get_tensor_name_map(model_arch(architecture), blocks)
    names: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        mapped = name_map.get_name(module_name)
        if mapped is not None and f"{mapped}.weight" in in_gguf:
            names[module_name] = f"{mapped}.weight"
    return names


def compute_imatrix(
    model: Any,
    token_ids: Sequence[Sequence[int]],
    weight_names: dict[str, str],
    dataset: str,
    batch_size: int = 8,
) -> ImportanceMatrix:
    """Run the rows through `model` and average x² per input column of each named linear layer.

    Rows go in right-padded batches (a few large matrix products instead of many small ones: 3.5x
    less CPU time than one row at a time on this 2-core CPU); the padding positions are left out of
    the sums, so the result is the same as row by row. Only the model's body runs: the output head's
    input is the body's last hidden state, so the logits (a 49k-wide product per token, a fifth of
    the arithmetic) are never computed.
    """
    import torch

    if not token_ids:
        raise ImatrixError("no training rows to compute an importance matrix from")
    if not weight_names:
        raise ImatrixError("no linear layer of the model maps to a weight of the GGUF file")
    modules = dict(model.named_modules())
    sums = {name: torch.zeros(modules[name].in_features, dtype=torch.float64) for name in weight_names}
    counts = dict.fromkeys(weight_names, 0)
    real = torch.ones(0, dtype=torch.bool)  # which positions of the current batch are tokens, not padding

    def hook_for(name: str) -> Callable[..., None]:
        def accumulate(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
            rows = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[real].double()
            sums[name] += rows.pow(2).sum(dim=0).cpu()
            counts[name] += rows.shape[0]

        return accumulate

    head = next((name for name, module in modules.items() if module is model.get_output_embeddings()), None)
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in weight_names if name != head]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            for first in range(0, len(token_ids), batch_size):
                batch = [list(ids) for ids in token_ids[first : first + batch_size]]
                width = max(len(ids) for ids in batch)
                mask = torch.tensor(
                    [[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device
                )
                ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch], device=device)
                real = mask.reshape(-1).bool()
                hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)[0]
                if head in weight_names:
                    hook_for(head)(None, (hidden,), None)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    values = {
        weight_names[name]: (sums[name] / counts[name]).float().numpy()
        for name in weight_names
        if counts[name] > 0
    }
    for gguf_name, column_means in values.items():
        if not np.isfinite(column_means).all():
            raise ImatrixError(f"the importance matrix for {gguf_name} holds non-finite values")
    tokens = sum(len(ids) for ids in token_ids)
    return ImportanceMatrix(values=values, texts=len(token_ids), tokens=tokens, dataset=dataset)
