"""Optional arguments the model is unsure of are left out, not guessed.

Greedy decoding writes an optional argument whenever, at the step that decides it, writing it is a
little likelier than not, and then writes the likeliest value, however unsure: "refund ORD-4702"
comes out with `"reason":"changed_mind"` at a probability of a few tenths, and a request that never
mentions urgency with `"urgency":"high"`. The key rule scores each optional top-level argument a
call wrote by the model's probability of writing it as written: the product, under the constrained
distribution greedy decoding chose from, of the model-chosen tokens from the separator before its
key (`{` or `,`: where writing it was decided) to the end of its value (a string's closing quote
excluded: the token that carries it decides what comes next). When the weakest is below the
router's `min_key_probability`, the request is decoded again with that argument left out of the
tool's grammar (the same fallback as a copy-rule dead end, `copy_rule.py`), until every optional
argument left is at or above it. Each retry removes an argument, so it ends.

`Router.load(min_key_probability=...)` (`--min-key-probability` on `route`, `serve` and `eval`);
0, the default, turns it off: picked on the customer-support validation rows, no threshold beat
off (BENCHMARKS.md, "The key rule"): the trained routers write their wrong optional arguments with
high probability, so the errors are the model's beliefs, which training has to fix. Required
arguments are never scored (leaving them out is not a valid call), nor are properties nested
inside an object argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ARGUMENTS_KEY = b'"arguments":'


@dataclass(frozen=True)
class ScoredToken:
    """A token the model chose: its bytes' place in the output and its constrained log-probability."""

    start: int
    end: int
    logprob: float


@dataclass(frozen=True)
class WeakArgument:
    """The optional argument the rule leaves out, and the probability it was written with."""

    name: str
    probability: float


def _string_end(data: bytes, index: int) -> int:
    """The offset just past the JSON string starting at `index` (its opening quote)."""
    index += 1
    while index < len(data):
        byte = data[index]
        if byte == 0x5C:  # a backslash escapes the next byte (`\"`, `\\`, `\u....` is plain after it)
            index += 2
            continue
        if byte == 0x22:
            return index + 1
        index += 1
    raise ValueError("unterminated string in the output")


def _value_end(data: bytes, index: int) -> int:
    """The offset just past the JSON value starting at `index` (compact JSON, as the grammar writes)."""
    first = data[index]
    if first == 0x22:
        return _string_end(data, index)
    if first in b"{[":
        depth = 0
        while index < len(data):
            byte = data[index]
            if byte == 0x22:
                index = _string_end(data, index)
                continue
            if byte in b"{[":
                depth += 1
            elif byte in b"}]":
                depth -= 1
                if depth == 0:
                    return index + 1
            index += 1
        raise ValueError("unterminated object or array in the output")
    while index < len(data) and data[index] not in b",}]":
        index += 1
    return index


def argument_spans(text: bytes) -> dict[str, tuple[int, int]]:
    """A canonical call's top-level arguments: name -> (offset of the `{` or `,` before its key,
    end of its value's content: a string's closing quote excluded). Empty for anything else."""
    at = text.find(ARGUMENTS_KEY)
    if at < 0:
        return {}
    index = at + len(ARGUMENTS_KEY)
    if index >= len(text) or text[index] != 0x7B:
        return {}
    spans: dict[str, tuple[int, int]] = {}
    separator = index
    index += 1
    while index < len(text) and text[index] == 0x22:
        key_end = _string_end(text, index)
        name = text[index + 1 : key_end - 1].decode("utf-8", "replace")
        value = key_end + 1  # past the colon
        end = _value_end(text, value)
        spans[name] = (separator, end - 1 if text[value] == 0x22 else end)
        if end >= len(text) or text[end] != 0x2C:
            break
        separator, index = end, end + 1
    return spans


def argument_probabilities(
    text: bytes, tokens: Sequence[ScoredToken], optional: Iterable[str]
) -> dict[str, float]:
    """Each optional argument the call wrote: the probability of the model-chosen tokens that
    overlap its bytes, from the separator before its key to the end of its value."""
    spans = argument_spans(text)
    result: dict[str, float] = {}
    for name in optional:
        if name not in spans:
            continue
        start, end = spans[name]
        logprob = sum(t.logprob for t in tokens if t.start < end and t.end > start)
        result[name] = math.exp(logprob)
    return result


def weakest_argument(
    text: bytes, tokens: Sequence[ScoredToken], optional: Iterable[str], threshold: float
) -> WeakArgument | None:
    """The least probable optional argument of the call, when it is below `threshold`."""
    if threshold <= 0.0:
        return None
    scores = argument_probabilities(text, tokens, optional)
    if not scores:
        return None
    name = min(scores, key=lambda n: (scores[n], n))
    return WeakArgument(name, scores[name]) if scores[name] < threshold else None
