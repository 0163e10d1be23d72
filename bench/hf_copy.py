"""The copy rule and the call score for the HF-side evaluation (transformers, before export).

The same rule as the runtime's (`toolroute.runtime.copying`: the same `CopyTracker`, the same
trie walk over the vocabulary's pieces), as a transformers logits processor that runs after
outlines' JSON Schema mask: inside a copied value only tokens that extend a span of the request
(or close a non-empty one) keep their logits, and outside one a token that would open a copied
value with anything but a span start is masked. The runtime decodes again without an argument
no span fits (a dead end); here generation cannot back off, so at a dead end the rule steps aside
for the rest of that output and the processor records where (`dead_end`).

The call score is read from the processed scores transformers returns: the log-softmax of each
step's masked logits is the constrained distribution, and a step with one allowed token (what
the runtime forces without asking the model) adds nothing, as in the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolroute.runtime.copying import CopyTracker, FieldLimits, PieceTrie, RequestText


def token_pieces(tokenizer: Any) -> list[bytes]:
    """The bytes each token id stands for (special tokens: b"", as llama.cpp spells them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = {index for index, added in tokenizer.added_tokens_decoder.items() if added.special}
    decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    ordinary = [t for i, t in enumerate(tokens) if i not in special and t]
    byte_level = all(char in decoder for token in ordinary for char in token)
    pieces = []
    for index, token in enumerate(tokens):
        if index in special or token is None:
            pieces.append(b"")
        elif byte_level:
            pieces.append(bytes(decoder[char] for char in token))
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            pieces.append(bytes((int(token[3:5], 16),)))  # SentencePiece byte fallback
        else:
            pieces.append(token.replace("\u2581", " ").encode("utf-8"))
    return pieces


class CopyLogitsProcessor:
    """A transformers logits processor holding copied values to spans of one request (batch of 1)."""

    def __init__(
        self,
        pieces: Sequence[bytes],
        trie: PieceTrie,
        quoted: np.ndarray,
        limits: Mapping[str, Mapping[str, FieldLimits]],
        request: str,
        prompt_length: int,
    ) -> None:
        self.pieces = pieces
        self.trie = trie
        self.quoted = quoted  # token ids whose piece holds a quote: the only ones that can open a value
        self.tracker = CopyTracker(RequestText(request), limits)
        self.seen = prompt_length
        self.dead_end: tuple[str, str] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for token in input_ids[0, self.seen :].tolist():
            if self.dead_end is None and not self.tracker.push(self.pieces[token]):
                self.dead_end = self.tracker.dead_end or ("?", "?")
        self.seen = input_ids.shape[1]
        if self.dead_end is not None:
            return scores
        row = scores[0]
        finite = torch.isfinite(row).cpu().numpy()
        if self.tracker.inside:
            candidates = self.tracker.candidates(self.trie)
            keep = [int(t) for t in candidates if finite[t] and self.tracker.allows(self.pieces[int(t)])]
            if not keep:
                self.dead_end = self.tracker.dead_end
                return scores
            masked = torch.full_like(row, -math.inf)
            masked[keep] = row[keep]
            scores[0] = masked
            return scores
        refused = [
            int(t) for t in self.quoted[finite[self.quoted]] if not self.tracker.allows(self.pieces[int(t)])
        ]
        if refused:
            if len(refused) == int(finite.sum()):
                self.dead_end = self.tracker.dead_end
                return scores
            row[refused] = -math.inf
        return scores


class CopyRuleForHf:
    """What a run needs to build one processor per request: the pieces, the trie, the limits."""

    def __init__(self, tokenizer: Any, limits: Mapping[str, Mapping[str, FieldLimits]]) -> None:
        self.pieces = token_pieces(tokenizer)
        self.trie = PieceTrie(self.pieces)
        self.quoted = np.array([i for i, p in enumerate(self.pieces) if b'"' in p], dtype=np.int64)
        self.limits = limits

    def processor(self, request: str, prompt_length: int) -> CopyLogitsProcessor:
        return CopyLogitsProcessor(self.pieces, self.trie, self.quoted, self.limits, request, prompt_length)


def call_scores(step_scores: Sequence[Any], chosen: Sequence[int]) -> tuple[float | None, float | None]:
    """(sum, min) of log p of the chosen tokens under each step's processed (masked) scores,
    leaving out steps with a single allowed token (forced)."""
    import torch

    logprobs = []
    for scores, token in zip(step_scores, chosen, strict=False):
        row = scores[0].float()
        if int(torch.isfinite(row).sum()) <= 1:
            continue
        logprobs.append(float(torch.log_softmax(row, dim=-1)[token]))
    if not logprobs:
        return None, None
    return sum(logprobs), min(logprobs)
