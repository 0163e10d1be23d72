"""A chat completion as OpenAI's stream of `chat.completion.chunk` objects (Server-Sent Events).

The order is OpenAI's, so the official clients' stream accumulation works unchanged:

1. `{"role": "assistant", ...}`: the role delta;
2. either one `tool_calls` delta carrying the whole call (index 0, id, type, name and the
   canonical arguments: a route is validated before a byte of it is sent, so the call is never
   streamed piecemeal) or `content` deltas (a no_tool reason, a held-back call's explanation,
   and later an answer to a tool result, piece by piece);
3. an empty delta with `finish_reason` (and the `toolroute` object, which clients ignore);
4. with `stream_options.include_usage`, a chunk with no choices and the `usage` (every other
   chunk then carries `"usage": null`, as OpenAI's do);
5. `data: [DONE]`.

Nothing here touches the network: the transport writes `sse_event(chunk)` for each chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(data: dict[str, Any]) -> bytes:
    """One `data:` event. JSON text never holds a raw newline, so one line always carries it."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def completion_chunks(
    completion: dict[str, Any], *, include_usage: bool = False, content: Iterable[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The chunks of `completion` (a `chat.completion` object), in OpenAI's order.

    `content` replaces the message's content with pieces produced while streaming (an answer
    generated token by token); `usage` and `toolroute` are read from `completion` only after the
    last piece, so a producer may fill them in as it finishes.
    """
    base: dict[str, Any] = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": None,
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    choice = completion["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    yield chunk({"role": "assistant", "content": None if calls else ""})
    for index, call in enumerate(calls):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    pieces = content if content is not None else [message.get("content") or ""]
    for piece in pieces:
        if piece:
            yield chunk({"content": piece})
    last = chunk({}, choice["finish_reason"])
    if "toolroute" in completion:
        last["toolroute"] = completion["toolroute"]
    yield last
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}
