"""The copy rule at decode time: inside a copied argument's string, only spans of this request.

On top of the catalogue's grammar (which the router file keeps unchanged, so stock llama.cpp
users still get valid JSON, without this rule), a token is allowed inside a copied string value
only if it extends a span of the request in the span's JSON-escaped spelling (`"` as `\\"`, a
backslash as `\\\\`, control characters escaped, everything else its own UTF-8 bytes), and the
closing quote only after a non-empty span that neither starts nor ends with whitespace and whose
length fits the field's limits (`minLength`, `maxLength` or the grammar's string cap). The
length is looked ahead: a span is only extended while some valid end is still within the cap,
so the grammar never forces a close the rule refuses.

Three pieces, pure Python over bytes (the HF-side evaluation uses them too):

- `RequestText`: one request's escaped spelling and, per byte offset, what a span may do there;
- `PieceTrie`: the vocabulary's pieces, sorted, walked byte by byte like a trie (no per-node
  objects, so 49k tokens cost one sorted list): inside a copied string, walking the request's
  escaped text from each live position gives the few tokens that may come next, instead of
  testing all 49k;
- `CopyTracker`: follows the output byte by byte (which JSON string is open, at what argument
  path, which tool) and, inside a copied value, the set of request positions the text written so
  far ends at. `allows(piece)` tries a token on a copy of the state; `push(piece)` takes it.

Where a copied argument can have no span at all (a pattern or format no span of this request
matches, a `minLength` longer than the request), decoding reaches a dead end; the tracker says
which argument (`dead_end`), and the router decodes again without it (see `router.py`).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from toolroute.grammars import CopiedArgument, ToolSpec
from toolroute.grammars.schema import string_property
from toolroute.grammars.spans import escaped_units

QUOTE = ord('"')
BACKSLASH = ord("\\")


@dataclass(frozen=True)
class FieldLimits:
    """Length limits of a copied value, in code points (as JSON Schema and the grammar count)."""

    min_chars: int
    max_chars: int


def copied_limits(
    tools: Iterable[ToolSpec], copied: Iterable[CopiedArgument], max_string_length: int
) -> dict[str, dict[str, FieldLimits]]:
    """{tool: {argument path: limits}} for the copied arguments of `tools`."""
    by_name = {tool.name: tool for tool in tools}
    limits: dict[str, dict[str, FieldLimits]] = {}
    for entry in copied:
        tool = by_name.get(entry.tool)
        schema = string_property(tool.parameters, entry.argument) if tool else None
        if schema is None:
            continue
        high = min(schema.get("maxLength", max_string_length), max_string_length)
        low = max(1, schema.get("minLength", 0))
        limits.setdefault(entry.tool, {})[entry.argument] = FieldLimits(low, high)
    return limits


class RequestText:
    """A request's JSON-escaped spelling and what a span may do at each of its byte offsets."""

    def __init__(self, request: str) -> None:
        units = escaped_units(request)
        self.text = b"".join(units)
        size = len(self.text)
        self.n_chars = len(units)
        offsets = [0, *accumulate(len(unit) for unit in units)]  # boundary j -> byte offset
        self.boundary_index = [-1] * (size + 1)  # byte offset -> boundary j, or -1 inside a unit
        for index, offset in enumerate(offsets):
            self.boundary_index[offset] = index
        # byte offset q -> the first boundary j at or after it
        self.next_boundary = [0] * (size + 1)
        following = self.n_chars
        for offset in range(size, -1, -1):
            if self.boundary_index[offset] >= 0:
                following = self.boundary_index[offset]
            self.next_boundary[offset] = following
        self.offsets = offsets
        # boundary j may end a span when the code point before it is not whitespace
        self.end_ok = [False] + [not char.isspace() for char in request]
        self.ends_upto = list(accumulate(int(flag) for flag in self.end_ok))  # count of ends <= j
        self._starts: dict[FieldLimits, dict[int, int]] = {}

    def has_end(self, low: int, high: int) -> bool:
        """Whether some boundary in [low, high] may end a span."""
        high = min(high, self.n_chars)
        if low > high:
            return False
        return self.ends_upto[high] - (self.ends_upto[low - 1] if low > 0 else 0) > 0

    def feasible(self, start: int, offset: int, limits: FieldLimits) -> bool:
        """Whether a span starting at code point `start`, already written up to byte `offset`,
        can still end within the limits."""
        low = max(self.next_boundary[offset], start + limits.min_chars)
        return self.has_end(low, start + limits.max_chars)

    def starts(self, limits: FieldLimits) -> dict[int, int]:
        """{byte offset: code point} of every start from which a span within `limits` exists."""
        found = self._starts.get(limits)
        if found is None:
            # end_ok[j] says code point j-1 is not whitespace: code point i may start a span
            # when end_ok[i + 1] holds and some end is within the limits from it.
            found = {
                self.offsets[index]: index
                for index in range(self.n_chars)
                if self.end_ok[index + 1] and self.feasible(index, self.offsets[index] + 1, limits)
            }
            self._starts[limits] = found
        return found

    def may_close(self, start: int, offset: int, limits: FieldLimits) -> bool:
        """Whether a span from code point `start` may end at byte `offset`."""
        end = self.boundary_index[offset]
        return end > start and self.end_ok[end] and limits.min_chars <= end - start <= limits.max_chars


@dataclass(frozen=True)
class _Cursor:
    """Inside a copied value: the request positions the written text ends at ({offset: start})."""

    path: str
    limits: FieldLimits
    positions: Mapping[int, int]
    written: int  # bytes written since the opening quote

    def at_boundary(self, text: RequestText) -> bool:
        offset = next(iter(self.positions))
        return text.boundary_index[offset] >= 0

    def may_close(self, text: RequestText) -> bool:
        return self.written > 0 and any(
            text.may_close(start, offset, self.limits) for offset, start in self.positions.items()
        )

    def step(self, text: RequestText, byte: int) -> _Cursor | None:
        data, limits = text.text, self.limits
        moved = {
            offset + 1: start
            for offset, start in self.positions.items()
            if offset < len(data) and data[offset] == byte and text.feasible(start, offset + 1, limits)
        }
        return _Cursor(self.path, limits, moved, self.written + 1) if moved else None


class CopyTracker:
    """Follows a canonical JSON output byte by byte and holds copied values to request spans.

    The state is immutable pieces (tuples, frozen cursors), so `allows` tries a token on a
    shallow copy. Never raises on odd input: the grammar decides what is valid JSON.
    """

    __slots__ = (
        "_copied", "_memo", "_optional", "_text", "buffer", "cursor", "escape", "in_string", "kind",
        "min_required_span_mass", "min_span_mass", "rejected", "stack", "tool",
    )  # fmt: skip

    def __init__(
        self,
        request: RequestText,
        copied: Mapping[str, Mapping[str, FieldLimits]],
        optional: Mapping[str, frozenset[str]] | None = None,
        min_span_mass: float = 0.0,
        min_required_span_mass: float = 0.0,
    ) -> None:
        self._text = request
        self._copied = copied
        # {tool: copied argument paths a call may leave out}, and the least probability the
        # model must give, at each step of one of those values, to what the rule allows there
        # (`gives_up`); 0 never gives up. The required arguments have a cut-off of their own.
        self._optional = optional or {}
        self.min_span_mass = min_span_mass
        self.min_required_span_mass = min_required_span_mass
        self.stack: tuple[tuple[str, str, bool, str], ...] = ()  # (kind o|a, path, expect_key, key)
        self.in_string = False
        self.kind = ""  # the open string: key | tool | value | copy
        self.escape = 0  # 1 right after a backslash; 5..2 after `\\u`: hex digits to come, plus one
        self.buffer = b""  # an open key or tool name
        self.tool: str | None = None
        self.cursor: _Cursor | None = None
        self.rejected: str | None = None  # the copied argument a refused piece was writing
        self._memo: tuple[_Cursor, PieceTrie, np.ndarray] | None = None  # the current cursor's candidates

    def copy(self) -> CopyTracker:
        twin = object.__new__(CopyTracker)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    @property
    def inside(self) -> bool:
        """Inside a copied string value (the next token must extend a span or close it)."""
        return self.cursor is not None

    @property
    def dead_end(self) -> tuple[str, str] | None:
        """(tool, argument) whose value the output was writing, or failed to start, when the
        last refusal happened: where to look when no token is allowed."""
        path = self.cursor.path if self.cursor is not None else self.rejected
        return (self.tool, path) if self.tool and path else None

    def gives_up(self, span_mass: float) -> bool:
        """Inside a copied value, with `span_mass` the model's probability of the tokens the rule
        allows next (extending a span of the request, or closing it): whether to give the value
        up (the router decodes again as at a dead end: without an optional argument, without a
        required argument's tool).
        A model that opens an argument the request has no value for wants a value it would
        invent (an order id in a request that has none): the rule would then force some
        unrelated span ("kenji", "10" of "10 days ago"), while the model's own mass sits
        elsewhere, at the opening or where the span ends short of what it wanted. For a required
        argument that call is wrong whatever span it copies: the request lacks what the tool needs.
        """
        cut_off = self._cut_off()
        return cut_off > 0.0 and span_mass < cut_off

    @property
    def guarded(self) -> bool:
        """Inside a copied value with a cut-off set: where `gives_up` can say yes, so the only
        steps whose span mass (a softmax over the whole vocabulary) is worth computing."""
        return self._cut_off() > 0.0

    def _cut_off(self) -> float:
        """The open copied value's cut-off: the optional or the required one; 0 outside a value."""
        cursor = self.cursor
        if cursor is None or self.tool is None:
            return 0.0
        if cursor.path in self._optional.get(self.tool, ()):
            return self.min_span_mass
        return self.min_required_span_mass

    def allows(self, piece: bytes) -> bool:
        probe = self.copy()
        if probe.push(piece):
            return True
        self.rejected = probe.rejected
        return False

    def push(self, piece: bytes) -> bool:
        """Take a piece; False (and a state that must be dropped) when the rule refuses it."""
        return all(self._byte(byte) for byte in piece)

    # -- the JSON walk ---------------------------------------------------------------------

    def _value_path(self) -> str:
        if not self.stack:
            return ""
        kind, path, _, key = self.stack[-1]
        if kind == "a":
            return f"{path}[]"
        return f"{path}.{key}" if path else key

    def _byte(self, byte: int) -> bool:
        if self.in_string:
            if self.cursor is not None:
                return self._copy_byte(byte)
            if self.escape == 1:  # the character after a backslash: `u` has four hex digits after it
                self.escape = 5 if byte == ord("u") else 0
            elif self.escape:
                self.escape = self.escape - 1 if self.escape > 2 else 0
            elif byte == BACKSLASH:
                self.escape = 1
            elif byte == QUOTE:
                self._close_string()
                return True
            if self.kind in ("key", "tool") and len(self.buffer) < 1024:
                self.buffer += bytes((byte,))
            return True
        if byte == QUOTE:
            return self._open_string()
        if byte in b"{[":
            self.stack = (*self.stack, ("o" if byte == ord("{") else "a", self._value_path(), True, ""))
        elif byte in b"}]":
            self.stack = self.stack[:-1]
        elif byte == ord(",") and self.stack and self.stack[-1][0] == "o":
            kind, path, _, key = self.stack[-1]
            self.stack = (*self.stack[:-1], (kind, path, True, key))
        elif byte == ord(":") and self.stack:
            kind, path, _, key = self.stack[-1]
            self.stack = (*self.stack[:-1], (kind, path, False, key))
        return True

    def _open_string(self) -> bool:
        self.in_string, self.buffer, self.escape = True, b"", 0
        top = self.stack[-1] if self.stack else None
        if top is not None and top[0] == "o" and top[2]:
            self.kind = "key"
            return True
        path = self._value_path()
        self.kind = "value"
        if len(self.stack) == 1 and path == "tool":
            self.kind = "tool"
        elif self.tool is not None and path.startswith("arguments."):
            argument = path[len("arguments.") :]
            limits = self._copied.get(self.tool, {}).get(argument)
            if limits is not None:
                positions = self._text.starts(limits)
                if not positions:
                    self.rejected = argument
                    return False
                self.kind = "copy"
                self.cursor = _Cursor(argument, limits, positions, 0)
        return True

    def _close_string(self) -> None:
        self.in_string = False
        if self.kind == "key" and self.stack:
            kind, path, expect_key, _ = self.stack[-1]
            self.stack = (*self.stack[:-1], (kind, path, expect_key, _json_text(self.buffer)))
        elif self.kind == "tool":
            self.tool = _json_text(self.buffer)
        self.buffer = b""

    def _copy_byte(self, byte: int) -> bool:
        cursor = self.cursor
        assert cursor is not None
        if byte == QUOTE and cursor.at_boundary(self._text):
            if not cursor.may_close(self._text):
                self.rejected = cursor.path
                return False
            self.cursor, self.in_string, self.kind = None, False, "value"
            return True
        moved = cursor.step(self._text, byte)
        if moved is None:
            self.rejected = cursor.path
            return False
        self.cursor = moved
        return True

    def continuation(self) -> bytes:
        """Inside a copied value that has begun: the request's escaped text after the earliest
        position the value so far ends at, up to the field's length cap (what the value would
        be if the model went on copying from there: the draft `drafting.py` proposes). Empty
        at the opening quote, where nothing yet says which span the model will copy."""
        cursor = self.cursor
        if cursor is None or not cursor.written:
            return b""
        offset, start = next(iter(cursor.positions.items()))
        text = self._text
        end = text.offsets[min(text.n_chars, start + cursor.limits.max_chars)]
        return text.text[offset:end]

    # -- the few tokens that may come next inside a copied value ---------------------------

    def candidates(self, trie: PieceTrie) -> np.ndarray:
        """Inside a copied value: every token that may come next under the rule (a superset
        for tokens that close the string and go on: `allows` decides those), found by walking
        the request's escaped text through the vocabulary's trie from each live position."""
        cursor = self.cursor
        assert cursor is not None
        if self._memo is not None and self._memo[0] is cursor and self._memo[1] is trie:
            return self._memo[2]  # a step asks twice: to pick, then to score
        text, data = self._text, self._text.text
        found: list[np.ndarray] = []
        for offset, start in cursor.positions.items():
            low, high, depth = 0, len(trie.pieces), 0
            while True:
                here = offset + depth
                if cursor.written + depth > 0 and text.may_close(start, here, cursor.limits):
                    closing = trie.narrow(low, high, data[offset:here] + b'"')
                    if closing[0] < closing[1]:
                        found.append(trie.ids[closing[0] : closing[1]])
                if here >= len(data) or not text.feasible(start, here + 1, cursor.limits):
                    break
                low, high = trie.narrow(low, high, data[offset : here + 1])
                if low >= high:
                    break
                depth += 1
                exact = trie.exact(low, high, data[offset : here + 1])
                if exact is not None:
                    found.append(exact)
        result = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int32)
        self._memo = (cursor, trie, result)
        return result


class PieceTrie:
    """The vocabulary's pieces, sorted: a range of the list is a trie node (the pieces sharing a
    prefix), and a child is found with two binary searches."""

    def __init__(self, pieces: Sequence[bytes], excluded: Iterable[int] = ()) -> None:
        skip = set(excluded)
        order = sorted((piece, token) for token, piece in enumerate(pieces) if piece and token not in skip)
        self.pieces = [piece for piece, _ in order]
        self.ids = np.array([token for _, token in order], dtype=np.int32)

    def narrow(self, low: int, high: int, prefix: bytes) -> tuple[int, int]:
        """The range of pieces starting with `prefix`, within [low, high) (whose pieces share all
        but the last byte of it)."""
        first = bisect.bisect_left(self.pieces, prefix, low, high)
        upper = _successor(prefix)
        last = high if upper is None else bisect.bisect_left(self.pieces, upper, first, high)
        return first, last

    def exact(self, low: int, high: int, piece: bytes) -> np.ndarray | None:
        """The tokens whose piece is exactly `piece` (the range's first entries, if any)."""
        end = low
        while end < high and self.pieces[end] == piece:
            end += 1
        return self.ids[low:end] if end > low else None


def _json_text(spelled: bytes) -> str:
    """A JSON string's text from its spelling between the quotes (as written; "" if malformed)."""
    try:
        return json.loads(b'"' + spelled + b'"')
    except ValueError:
        return ""


def _successor(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))
