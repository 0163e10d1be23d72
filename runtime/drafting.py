"""Copied values drafted from the request and verified in one model batch (prompt lookup).

Inside a copied argument's string the model is copying a span of the request, so the request's
following tokens are a good guess at what it writes next. `Lookahead` stands between the
greedy loop and the model: when decoding asks for the logits after the tokens it has taken and
it is inside a copied value, the request's next word (from `CopyTracker.continuation`, tokenized)
goes into the same llama.cpp batch as those tokens, with logits kept for every row. The loop
then goes on exactly as it would without a draft: it picks under the grammar and the copy rule
from the first row's logits, takes forced bytes, and asks again; when what it took since is the
next drafted token alone, the logits after that token are already there (no model call),
otherwise the rest of the draft is dropped from the KV cache and the model runs as usual. So a
drafted token is accepted only where it equals the constrained argmax (greedy verification): a
wrong draft costs one wider batch, never a different output. What can differ is the arithmetic:
llama.cpp may evaluate a wider batch with other kernels, so logits move in the last bits, which
flips a pick only at a near tie (tests/test_fast_path_parity.py lists any).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .decoding import Context

# Drafted tokens per batch, at most. On one CPU thread (SmolLM2-135M, Q4_1; `python -m
# toolroute.bench.latency breakdown`) a one-token step costs ~12.5 ms and each drafted row adds
# ~8.5 ms (~6 ms of layers, like a prompt token, and ~2.5 ms of output head for its logits), so
# a drafted token pays only when it is right most of the time. Hence a draft is one word of the
# request (the rest of the word being copied, or the next word at a word boundary: a value
# often ends at a word's end, where the model closes the quote), and after a refusal the window
# shrinks to what was taken (at least one token), doubling again while whole drafts are taken.
MAX_DRAFT = 8
FIRST_DRAFT = MAX_DRAFT

Draft = Callable[[int], list[int]]  # the most tokens wanted -> the drafted tokens (maybe none)


class Lookahead:
    """Logits for one sequence of a context, with drafted rows kept until the loop uses or
    refuses them. One generation, one thread."""

    def __init__(self, context: Context, seq: int, position: int) -> None:
        self.context = context
        self.seq = seq
        self.position = position  # cells of `seq` the loop has taken (drafted ones beyond it)
        self._ahead: list[tuple[int, np.ndarray]] = []  # (drafted token, logits after it)
        self.window = FIRST_DRAFT  # tokens the next draft may have
        self._taken = 0  # tokens of the current draft the loop took
        self.drafted = 0  # tokens put into batches as drafts
        self.accepted = 0  # of them, tokens the loop took

    def logits(self, pending: list[int], draft: Draft | None = None, room: int = 0) -> np.ndarray:
        """The logits after `pending` (the tokens taken since the last call, then cleared). With
        `draft`, up to `min(room, window)` drafted tokens ride along in the batch."""
        if self._ahead and pending == [self._ahead[0][0]]:
            logits = self._ahead.pop(0)[1]
            self.position += 1
            self.accepted += 1
            self._taken += 1
            if not self._ahead:  # the whole draft was right: guess further next time
                self.window = min(MAX_DRAFT, 2 * self.window)
            pending.clear()
            return logits
        self.discard()
        guess = draft(min(room, self.window)) if draft is not None and room > 0 else []
        if not guess or len(pending) + len(guess) > self.context.n_batch:
            logits = self.context.extend(pending, self.seq, self.position)
            assert logits is not None  # pending is never empty: every step takes a token
        else:
            rows = self.context.extend_rows([*pending, *guess], self.seq, self.position, len(guess) + 1)
            logits = rows[0]
            self._ahead = list(zip(guess, rows[1:], strict=True))
            self._taken = 0
            self.drafted += len(guess)
        self.position += len(pending)
        pending.clear()
        return logits

    def logits_rows(self, pending: list[int]) -> list[np.ndarray | None]:
        """The logits after each of `pending`'s tokens (then cleared), in one batch, no draft:
        how the name scorer gets the greedy decoding's own logits along the name. A row costs
        the output head only (~2.5 ms here), not a model step. None where a long `pending`
        spanned several batches (only the last row is kept then)."""
        self.discard()
        if len(pending) > self.context.n_batch:
            return [*([None] * (len(pending) - 1)), self.logits(pending)]
        rows: list[np.ndarray | None] = list(
            self.context.extend_rows(pending, self.seq, self.position, len(pending))
        )
        self.position += len(pending)
        pending.clear()
        return rows

    def discard(self) -> None:
        """Drop the drafted cells the loop did not take (the next batch goes where they were)."""
        if self._ahead:
            self.context.seq_rm(self.seq, self.position, -1)
            self._ahead = []
            self.window = max(1, self._taken)


def request_draft(continuation: bytes, tokenize: Callable[[bytes], list[int]], limit: int) -> list[int]:
    """The rest of the word being copied (or, at a word boundary, the next word with the space
    before it) as the tokenizer spells it on its own (which is how training spelled most copied
    values: they start a JSON string), at most `limit` tokens."""
    if not continuation or limit <= 0:
        return []
    words = continuation.split(maxsplit=1)
    if not words:
        return []
    lead = len(continuation) - len(continuation.lstrip())
    return tokenize(continuation[: lead + len(words[0])])[:limit]
