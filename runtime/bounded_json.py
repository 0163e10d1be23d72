"""JSON from untrusted text with a nesting limit: one place that turns hostile JSON into a ValueError.

`json.loads` recurses once per `[` or `{` and raises `RecursionError` (not a `ValueError`) past
the interpreter's limit, and what parses just under that limit (~1,000 levels) then breaks the
recursive code after it (Pydantic, schema normalisation, `json.dumps`). Every JSON value a client
sends is read here, so everything downstream sees at most `MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import json
from typing import Any

# Real requests nest a few levels (a tool schema's `items` in `properties` in `parameters`, ~10);
# this leaves ample room while keeping recursive code far from the interpreter's limit.
MAX_JSON_DEPTH = 64


class JsonInputError(ValueError):
    """Text that is not JSON, or JSON nested deeper than the limit."""


def loads_bounded(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, what: str = "the body") -> Any:
    """Parse JSON text, refusing invalid JSON and nesting deeper than `max_depth` (containers)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonInputError(f"{what} nests JSON deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers over Python's digit limit
        raise JsonInputError(f"{what} is not valid JSON: {exc}") from None
    if json_depth(value, stop_after=max_depth) > max_depth:
        raise JsonInputError(f"{what} nests JSON deeper than {max_depth} levels")
    return value


def json_depth(value: Any, stop_after: int | None = None) -> int:
    """Containers nested in `value` (a scalar is 0, `[]` is 1), without recursion.

    Returns as soon as one container lies deeper than `stop_after`.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest
