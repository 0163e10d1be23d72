"""Quantization-aware fine-tuning: train against the weights a quantization level will hold.

A 135M router loses arguments at Q4_K_M that it writes at F16 (customer support, test rows:
argument match 0.891 at F16, 0.821 at Q4_K_M; BENCHMARKS.md, "Quantization-aware fine-tuning").
Half of that loss sits in the layers full fine-tuning never touches and half in the trained ones
(measured by putting either half back at F16 in a Q4_K_M file). So, with `quant_aware = LEVEL`:

- every weight matrix the run does not train is replaced, once, by its value after rounding to the
  type LEVEL gives it: the trained layers learn on top of the frozen layers the shipped file holds;
- every trained weight matrix is rounded the same way in each forward pass, with the gradient passed
  straight through to the unrounded weight (the straight-through estimator): training finds weights
  whose rounded values route well. The saved weights are the unrounded ones; export rounds them.

Which type each tensor gets is llama.cpp's own choice, read from the base quantized to LEVEL once
with export's parameters (`export.quantize.level_types`, which the `train` command hands to the
trainer: training sits below export). The rounding
follows llama.cpp's reference quantizers where they are simple (Q8_0 and Q5_0: what most of a
Q4_K_M file of the 576-wide default base is, since its rows do not split into K-quant blocks) and
approximates the K-quants (Q4_K as 32-wide min/scale blocks, Q6_K as 16-wide symmetric blocks, with
their block scales left unrounded). Importance-weighted rounding is not modelled.

The embedding stays frozen; in the packaged bases it is tied to the output head, so it is rounded
once like any frozen weight (export keeps it at Q8_0 in every level).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# llama.cpp tensor name parts -> the module path transformers gives the same weight in a decoder
# layer (Llama-style bases: SmolLM2; Gemma 3 names its norms differently but not these).
_LAYER_WEIGHTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")
TOKEN_EMBEDDING = "token_embd.weight"


def module_path(gguf_name: str) -> str | None:
    """The transformers module whose `weight` a GGUF tensor is (None: not a rounded weight)."""
    if gguf_name == TOKEN_EMBEDDING:
        return "model.embed_tokens"
    match = _GGUF_LAYER.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_WEIGHTS:
        return None
    return f"model.layers.{match.group(1)}.{_LAYER_WEIGHTS[match.group(2)]}"


def _blocks(weight: Any, size: int) -> Any:
    if weight.shape[-1] % size:
        raise ValueError(f"a row of {weight.shape[-1]} values does not split into blocks of {size}")
    return weight.reshape(-1, size)


def _signed_max(blocks: Any) -> Any:
    """Each block's value of largest magnitude, with its sign (llama.cpp's reference quantizers)."""
    import torch

    index = blocks.abs().argmax(dim=1, keepdim=True)
    return torch.gather(blocks, 1, index)


def _half(scale: Any) -> Any:
    """A block scale as the file stores it (f16); the levels are found with the f32 scale."""
    return scale.half().float()


def round_q8_0(weight: Any) -> Any:
    """`quantize_row_q8_0_ref`: blocks of 32, d = amax / 127, q = round(x / d)."""
    import torch

    blocks = _blocks(weight.float(), 32)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return (torch.round(blocks * inverse) * _half(scale)).reshape(weight.shape).to(weight.dtype)


def round_q5_0(weight: Any) -> Any:
    """`quantize_row_q5_0_ref`: blocks of 32, d = max / -16, q = min(31, trunc(x / d + 16.5)) - 16."""
    import torch

    blocks = _blocks(weight.float(), 32)
    scale = _signed_max(blocks) / -16.0
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    levels = torch.clamp(torch.trunc(blocks * inverse + 16.5), max=31.0) - 16.0
    return (levels * _half(scale)).reshape(weight.shape).to(weight.dtype)


def round_q4_k(weight: Any) -> Any:
    """Q4_K, approximated: 32-wide blocks of 16 levels between min(0, min x) and max x."""
    import torch

    blocks = _blocks(weight.float(), 32)
    low = torch.clamp(blocks.amin(dim=1, keepdim=True), max=0.0)
    scale = (blocks.amax(dim=1, keepdim=True) - low) / 15.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    levels = torch.clamp(torch.round((blocks - low) * inverse), 0.0, 15.0)
    return (levels * scale + low).reshape(weight.shape).to(weight.dtype)


def round_q6_k(weight: Any) -> Any:
    """Q6_K, approximated: 16-wide symmetric blocks, d = max / -32, q in [-32, 31]."""
    import torch

    blocks = _blocks(weight.float(), 16)
    scale = _signed_max(blocks) / -32.0
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    levels = torch.clamp(torch.round(blocks * inverse), -32.0, 31.0)
    return (levels * scale).reshape(weight.shape).to(weight.dtype)


def _unrounded(weight: Any) -> Any:
    return weight


ROUNDING: dict[str, Callable[[Any], Any]] = {
    "Q8_0": round_q8_0,
    "Q5_0": round_q5_0,
    "Q4_K": round_q4_k,
    "Q6_K": round_q6_k,
    "F16": _unrounded,  # the trained dtype keeps f16's precision to within training noise
    "F32": _unrounded,
}


@dataclass
class QuantAwareReport:
    """What `apply_quant_aware` did, printed before training (the manifest records the level)."""

    level: str
    frozen: dict[str, int] = field(default_factory=dict)  # type -> weights rounded once
    trained: dict[str, int] = field(default_factory=dict)  # type -> weights rounded in each step

    def summary(self) -> str:
        def counts(by_type: Mapping[str, int]) -> str:
            return ", ".join(f"{kind} {count}" for kind, count in sorted(by_type.items())) or "none"

        return (
            f"quantization-aware ({self.level}): frozen weights rounded once: {counts(self.frozen)}; "
            f"trained weights rounded in each step: {counts(self.trained)}"
        )


def _straight_through(rounding: Callable[[Any], Any]) -> Any:
    import torch

    class StraightThrough(torch.nn.Module):
        """The rounded weight in the forward pass, the gradient straight to the unrounded one.

        The rounding error is kept until the weight changes (its version counter moves with every
        in-place update, i.e. each optimizer step): with gradient accumulation and checkpointing a
        step reads each weight four times, and rounding 57M weights at every read made a CPU step
        about 5.1 s, against 3.2 s with the error kept."""

        def __init__(self) -> None:
            super().__init__()
            self._error: Any = None
            self._version: tuple[int, int] | None = None

        def forward(self, weight: Any) -> Any:
            version = (weight.data_ptr(), weight._version)
            if self._version != version:
                with torch.no_grad():
                    self._error = rounding(weight) - weight
                self._version = version
            return weight + self._error

    return StraightThrough()


def check_roundable(types: Mapping[str, str], level: str) -> None:
    """Refuse, with the tensor named, a weight whose type at `level` this module cannot round."""
    for name, kind in sorted(types.items()):
        if module_path(name) is not None and kind not in ROUNDING:
            raise ValueError(f"quantization-aware: {name} is {kind} at {level}, which cannot be modelled")


def apply_quant_aware(model: Any, types: Mapping[str, str], level: str) -> QuantAwareReport:
    """Round the frozen weights in place and put the straight-through rounding on the trained ones.

    `types`: GGUF tensor name -> llama.cpp type name, as `level_types` reads them. A type this
    module cannot round is refused with the tensor named, before anything is changed.
    """
    import torch
    from torch.nn.utils import parametrize

    check_roundable(types, level)
    modules = dict(model.named_modules())
    plan: list[tuple[Any, str]] = []
    for name, kind in sorted(types.items()):
        path = module_path(name)
        if path is None:
            continue
        if path not in modules:
            raise ValueError(f"quantization-aware: {name} has no module {path} in this model")
        plan.append((modules[path], kind))
    report = QuantAwareReport(level=level)
    for module, kind in plan:
        if module.weight.requires_grad:
            parametrize.register_parametrization(module, "weight", _straight_through(ROUNDING[kind]))
            report.trained[kind] = report.trained.get(kind, 0) + 1
        else:
            with torch.no_grad():
                module.weight.copy_(ROUNDING[kind](module.weight))
            report.frozen[kind] = report.frozen.get(kind, 0) + 1
    return report


def remove_quant_aware(model: Any) -> None:
    """Take the straight-through rounding off, keeping the unrounded (trained) weights."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
