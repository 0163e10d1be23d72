"""Read JSONL data files one line at a time; every failure is an error naming the line, never a crash.

Lines are split on "\\n" only, in bytes: `str.splitlines` also splits on U+2028, U+2029 and
U+0085, which `json.dumps(..., ensure_ascii=False)` (every writer in this project) leaves raw
inside strings, so it would cut a valid row in two and shift every later line number. Each line
is decoded on its own, so bad UTF-8 names its line, and the file is never held in memory whole.

JSON text (a line, or a JSON string inside one such as `arguments`) goes through `parse_json`:
a syntax error, a number too long for Python's int conversion or nesting deeper than
`MAX_JSON_DEPTH` (the server's limit on request bodies too) all raise `JsonTextError`, a
`ValueError` whose message fits after `file:line: `.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolroute.runtime.bounded_json import MAX_JSON_DEPTH, json_depth

_BOM = b"\xef\xbb\xbf"


class JsonTextError(ValueError):
    """JSON text that cannot be used: what is wrong, without a file or line (the caller adds them)."""


def parse_json(text: str | bytes) -> Any:
    """`json.loads` whose every failure is a `JsonTextError`; the value nests at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # json's own "line 1" is the line within this line; the column is what helps.
        raise JsonTextError(f"{exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise JsonTextError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer past sys.get_int_max_str_digits()
        raise JsonTextError(f"a number too long to read ({str(exc).split(';')[0]})") from None
    if json_depth(value, stop_after=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise JsonTextError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line: its number, its text and value, or what is wrong with it."""

    number: int
    text: str = ""  # the line as written, without its line ending ("" when it is not UTF-8)
    value: Any = None
    error: str | None = None


def read_jsonl(path: str | Path) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSONL file, in order. Raises OSError only if the file cannot be opened."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # a BOM some Windows editors write: not part of the JSON
            if not raw.strip():
                continue
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonlLine(number, error=f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            try:
                yield JsonlLine(number, text, parse_json(text))
            except JsonTextError as exc:
                yield JsonlLine(number, text, error=f"bad JSON: {exc}")
