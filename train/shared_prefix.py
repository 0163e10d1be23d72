"""Run the decoder once over the tokens every row of a batch starts with.

Every row of a router's training data opens with the same system turn (the whole tool catalogue in
`compact` mode: ~175 of ~230 tokens a row on the customer-support set). The decoder evaluates that
prefix once, at batch size 1, keeps its keys and values, repeats them across the batch and runs
only each row's own tokens on top. The repeat is an autograd op, so the gradients of all rows flow
back into the one prefix evaluation: the loss and its gradients are the padded batch's own.
Answer-step rows (the reply to a tool's output) open with the same system turn and are scored
only at their reply, so they share the prefix like routing rows (tests/test_answers_training.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORED = -100


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Tokens every row starts with, stopping before the first position any loss depends on.

    The hidden state at position t predicts the label at t + 1, so the prefix ends at least one
    token before the first label that is not ignored: every state the loss reads comes from the
    per-row pass. It also stops at the first padded column and leaves every row a token of its own.
    """
    if input_ids.size(0) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & (attention_mask == 1).all(dim=0)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else input_ids.size(1)
    scored = (labels != IGNORED).any(dim=0).nonzero()
    first_label = int(scored[0]) if len(scored) else input_ids.size(1)
    return max(0, min(common, first_label - 1, input_ids.size(1) - 1))


def decoder_states(
    decoder: Any, model_inputs: dict[str, Any], labels: torch.Tensor | None, share_prefix: bool
) -> tuple[torch.Tensor, int]:
    """The decoder's last hidden states, and the position of their first column.

    With `share_prefix`, a padded batch (input ids and attention mask only: not a packed one) and
    rows that share a prefix, the states start after it (the prefix's own states feed no loss);
    otherwise they cover every position.
    """
    prefix = 0
    if share_prefix and labels is not None and set(model_inputs) == {"input_ids", "attention_mask"}:
        prefix = shared_prefix_length(model_inputs["input_ids"], model_inputs["attention_mask"], labels)
    if prefix == 0:
        return decoder(**model_inputs, use_cache=False).last_hidden_state, 0
    input_ids = model_inputs["input_ids"]
    cache = decoder(input_ids=input_ids[:1, :prefix], use_cache=True).past_key_values
    cache.batch_repeat_interleave(input_ids.size(0))
    suffix = decoder(
        input_ids=input_ids[:, prefix:],
        attention_mask=model_inputs["attention_mask"],
        past_key_values=cache,
        use_cache=True,
    )
    return suffix.last_hidden_state, prefix
