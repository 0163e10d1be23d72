"""The span predicate: is a value a span of the request, and the spans of a request.

A *span* of a request is a contiguous piece of the text exactly as the user wrote it: byte for
byte (case, accents and inner spaces kept; no Unicode normalisation), never empty, and never
starting or ending with whitespace (`str.isspace`). A copied argument's value must be one; the
training run measures how often an argument's values are ones (`is_span`); the runtime walks
the request's JSON-escaped spelling (`escaped_units`) to let the model write only spans; the
fast path drafts values from `spans`. One definition for all of them.

Python's `in` on `str` is exact code-point matching, which for valid text is the same as
byte-for-byte matching of the UTF-8 encodings (UTF-8 is self-synchronising: a character's bytes
never start in the middle of another's).
"""

from __future__ import annotations

import json
from collections.abc import Iterator


def is_span(value: str, request: str) -> bool:
    """Whether `value` is a span of `request` (see the module docstring)."""
    return bool(value) and not value[0].isspace() and not value[-1].isspace() and value in request


def span_bounds(request: str) -> tuple[list[int], list[int]]:
    """(indices where a span may start, indices after which one may end): the code points of
    `request` that are not whitespace, as starts `i` and ends `i + 1`."""
    solid = [index for index, char in enumerate(request) if not char.isspace()]
    return solid, [index + 1 for index in solid]


def spans(request: str, max_chars: int | None = None) -> Iterator[str]:
    """Every distinct span of `request` (at most `max_chars` code points long), shortest start
    first. There are O(n^2) of them: bound `max_chars` for long requests."""
    starts, ends = span_bounds(request)
    seen: set[str] = set()
    for start in starts:
        for end in ends:
            if end <= start:
                continue
            if max_chars is not None and end - start > max_chars:
                break
            value = request[start:end]
            if value not in seen:
                seen.add(value)
                yield value


def escaped_units(request: str) -> list[bytes]:
    """Each code point of `request` as it is spelled inside a canonical JSON string (UTF-8 of
    `json.dumps(..., ensure_ascii=False)` without the quotes): `"` is `\\"`, a backslash `\\\\`,
    control characters `\\n` or `\\u001f`; everything else is its own UTF-8 bytes. A span's
    spelling is the concatenation of its code points' units."""
    return [json.dumps(char, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass") for char in request]
