"""The answer step: the router's reply to a tool's output, decoded greedily without a grammar.

The prompt is `RouterPrompt.render_answer` (the routed conversation, the router's canonical call,
the tool's output as a `tool` turn), the renderer training's answer rows use, tokenized so that
the request, the call and the tool's output never become special tokens (`PromptTokenizer`). The
decoding runs in the router's work sequence over the cached system prefix, like a route, and the
sequence is dropped afterwards. It stops at the end of the assistant's turn: an end-of-generation
token, any other control token (the model opening a new turn), or the template's end-of-turn text
spelled in plain pieces; or at the token cap (`DEFAULT_ANSWER_TOKENS`, overridable).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic_core import to_jsonable_python

from .decoding import Context, Vocabulary
from .results import WaitCancelledError

# An answer is a sentence or two stating what the tool returned; the cap keeps every answer
# finite (and its KV cells reserved up front) whatever an untrained or confused model does.
DEFAULT_ANSWER_TOKENS = 256


def tool_output_text(value: Any) -> str:
    """A tool's output as the text the answer prompt shows: a string as is, anything else as JSON
    (`json.dumps` with its default separators, non-ASCII kept, Pydantic models and dates as
    Pydantic dumps them), which is how OpenAI-format data writes a tool message's content."""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


@dataclass
class DecodedAnswer:
    text: bytes
    tokens: int
    truncated: bool


def decode_answer(
    context: Context,
    vocabulary: Vocabulary,
    pending: list[int],
    position: int,
    seq: int,
    budget: int,
    end_of_turn: bytes,
    cancelled: threading.Event | None = None,
) -> DecodedAnswer:
    """Greedy decoding of at most `budget` tokens after `pending` (evaluated from `position` in
    sequence `seq`, whose earlier cells the caller set up). `cancelled` set (the client went
    away): `WaitCancelledError` before the next token."""
    out = bytearray()
    produced = 0
    pending = list(pending)
    while True:
        if cancelled is not None and cancelled.is_set():
            raise WaitCancelledError("the request was withdrawn while its answer was decoded")
        if produced >= budget:
            return DecodedAnswer(bytes(out), produced, True)
        logits = context.extend(pending, seq, position)
        assert logits is not None  # `pending` is never empty here
        position += len(pending)
        token = int(np.argmax(logits))
        piece = vocabulary.pieces[token]
        # A control token renders as no piece: anything but the end of the turn would open a new
        # one (`<|im_start|>`), which an answer never does.
        if vocabulary.is_eog(token) or not piece:
            return DecodedAnswer(bytes(out), produced, False)
        out.extend(piece)
        produced += 1
        if end_of_turn and end_of_turn in out:
            return DecodedAnswer(bytes(out[: out.index(end_of_turn)]), produced, False)
        pending = [token]


def answer_text(data: bytes) -> str:
    """The answer as text, less surrounding whitespace; a character cut at the cap is dropped."""
    return data.decode("utf-8", "ignore").strip()
