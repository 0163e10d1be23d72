"""The LM head and cross-entropy only where the loss is: the completion tokens.

TRL 1.16 patches the model with a fused, chunked LM head, but on a device without Triton (a CPU)
it scores every position, prompt and padding included, and masks afterwards: on SmolLM2-135M the
49,152-word head at ~120 positions a row, of which ~25 are scored. Here the decoder runs on its
own (with the shared prefix once, see `shared_prefix.py`), the positions whose next token is a
label are gathered, and only those go through the head. The per-token log-probabilities, entropy
and top-1 flags come from TRL's own kernel, so the loss and the logged metrics are the stock ones.

`add_completion_head` puts this behind the model's own forward (`completion_head=True`), the way
TRL adds its fused head, so that the call goes through whatever wraps the model (PEFT, DDP, FSDP)
and their hooks run.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from .shared_prefix import IGNORED, decoder_states

# Config fields that rescale logits in ways this head does not reproduce; such models take the stock step.
_UNSUPPORTED_LOGIT_SCALING = ("output_multiplier", "lm_head_multiplier", "logits_scaling")
# Vocabulary columns per projection tile, as in TRL's fused head.
_VOCAB_CHUNK = 32768
# Forward arguments that are not decoder inputs (PEFT passes the output switches as None).
_NOT_DECODER_INPUTS = {
    "labels", "shift_labels", "num_items_in_batch", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "inputs_embeds",
}  # fmt: skip


@dataclass
class CompletionOutput(ModelOutput):
    """Per-token results at the scored positions only, one flat vector each."""

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None


def supports_fast_head(causal_lm: Any) -> bool:
    config = causal_lm.config.get_text_config()
    return all(getattr(config, name, None) is None for name in _UNSUPPORTED_LOGIT_SCALING)


def completion_tokens(causal_lm: Any, inputs: dict[str, Any], share_prefix: bool) -> CompletionOutput:
    """Decoder, then the LM head at the positions whose next-token label is not ignored."""
    from trl.kernels import ChunkedLogProbFunction

    if inputs.get("inputs_embeds") is not None:
        raise ValueError("the completion head takes input_ids, not inputs_embeds")
    model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_DECODER_INPUTS and v is not None}
    shifted = inputs.get("shift_labels")
    hidden, offset = decoder_states(
        causal_lm.base_model, model_inputs, None if shifted is not None else inputs["labels"], share_prefix
    )
    if shifted is not None:  # pre-shifted by the caller: label t belongs to the state at t
        labels = shifted[:, offset:]
    else:  # the state at t predicts the label at t + 1
        labels, hidden = inputs["labels"][:, offset + 1 :], hidden[:, :-1]
    head = causal_lm.get_output_embeddings()
    labels = labels.to(head.weight.device)
    mask = labels != IGNORED
    config = causal_lm.config.get_text_config()
    scale = getattr(config, "logit_scale", None)
    log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
        hidden.to(head.weight.device)[mask],
        head.weight,
        head.bias,
        labels[mask],
        1.0,
        _VOCAB_CHUNK,
        getattr(config, "final_logit_softcapping", None),
        1.0 if scale is None else scale,
        ("log_probs", "entropy", "is_top1"),
    )
    return CompletionOutput(log_probs=log_probs, entropy=entropy, is_top1=is_top1)


def add_completion_head(causal_lm: Any) -> None:
    """`causal_lm(..., completion_head=True, share_prefix=B)` returns a `CompletionOutput`.

    Without `completion_head` the forward is the one before (TRL's, with its fused head), so
    generation and the stock step are unchanged.
    """
    previous = causal_lm.forward

    # The original signature: `generate` checks its keyword arguments against it.
    @functools.wraps(type(causal_lm).forward)
    def forward(
        self: Any, *args: Any, completion_head: bool = False, share_prefix: bool = False, **kwargs: Any
    ):
        if not completion_head:
            return previous(*args, **kwargs)
        if args:
            raise TypeError("the completion head takes keyword arguments only")
        return completion_tokens(self, kwargs, share_prefix)

    causal_lm.forward = types.MethodType(forward, causal_lm)
