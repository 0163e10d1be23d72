"""What llama.cpp's GBNF parser refuses for size, checked before llama.cpp ever sees a grammar.

llama.cpp (`src/llama-grammar.cpp`, `llama_grammar_parser::parse_sequence`) expands each repeat
`S{m,n}` into copies of S and n-m helper rules, and guards that with MAX_REPETITION_THRESHOLD
(2000): a repeat's count (n, else m, else 1) times the number of rules the repeated item
generated (1 for a literal, class or rule name; for a parenthesised group, the group's own rule
plus every rule generated or first named inside it) must not exceed 2000, or the grammar is
refused with "... exceeds sane defaults". A count over 2000 is refused as a minimum and read as
"unbounded" as a maximum, which would silently make a capped string endless, so toolroute
refuses both. Its parser also recurses once per nested group and crashes the process on very
deep nesting, hence the depth limit.

`check_llama_limits` replays that counting over a grammar's text, so `toolroute grammar`,
training and export refuse what `Router.load` would otherwise refuse at the very end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_REPETITION_THRESHOLD = 2000
MAX_GROUP_DEPTH = 256  # far above what toolroute writes, far below what overflows llama.cpp's stack

_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Escapes are at least a backslash and one character; what follows the pair is plain text.
_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CLASS = re.compile(r"\[(?:[^\]\\]|\\.)*\]", re.DOTALL)
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_NEWLINES = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_UNBOUNDED = -1


class GrammarLimitError(ValueError):
    """A grammar that llama.cpp's parser would refuse (or misread) for its size or nesting."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        self.detail = detail
        super().__init__(f"grammar rule '{rule}': {detail}")


@dataclass
class _Sequence:
    """One sequence being read: what llama.cpp's `n_prev_rules` holds for the last item."""

    n_prev_rules: int = 1
    has_item: bool = False  # llama.cpp's `last_sym_start != rule.size()`: something to repeat
    rules_before_group: int = 0  # for a group's inner sequence: the symbol count at its '('


@dataclass
class _Counter:
    """llama.cpp's `symbol_ids`: every rule name seen so far plus every generated rule."""

    names: set[str] = field(default_factory=set)
    generated: int = 0

    @property
    def size(self) -> int:
        return len(self.names) + self.generated

    def name(self, name: str) -> None:
        self.names.add(name)


def _skip_space(text: str, index: int, newline_ok: bool) -> int:
    return (_SPACE_NEWLINES if newline_ok else _SPACE).match(text, index).end()  # type: ignore[union-attr]


def _skip_terminal(text: str, index: int, rule: str) -> int:
    """Past a literal `"..."` or a class `[...]` starting at `index`."""
    match = (_LITERAL if text[index] == '"' else _CLASS).match(text, index)
    if match is None:
        raise GrammarLimitError(rule, f"unterminated literal or class at {text[index : index + 20]!r}")
    return match.end()


def _read_int(text: str, index: int, rule: str) -> tuple[int, int]:
    end = index
    while end < len(text) and text[end].isdigit():
        end += 1
    if end == index:
        raise GrammarLimitError(rule, f"expecting an integer at {text[index : index + 20]!r}")
    return int(text[index:end]), end


def _read_braces(text: str, index: int, rule: str, nested: bool) -> tuple[int, int, int]:
    """`{m}`, `{m,}` or `{m,n}` from just after `{`: (min, max or _UNBOUNDED, end)."""
    index = _skip_space(text, index, nested)
    low, index = _read_int(text, index, rule)
    index = _skip_space(text, index, nested)
    high = low
    if index < len(text) and text[index] == ",":
        index = _skip_space(text, index + 1, nested)
        high = _UNBOUNDED
        if index < len(text) and text[index].isdigit():
            high, index = _read_int(text, index, rule)
            index = _skip_space(text, index, nested)
    if index >= len(text) or text[index] != "}":
        raise GrammarLimitError(rule, f"expecting '}}' at {text[index : index + 20]!r}")
    return low, high, _skip_space(text, index + 1, nested)


def _repeat(frame: _Sequence, counter: _Counter, low: int, high: int, rule: str) -> None:
    """llama.cpp's `handle_repetitions`: the size check, then the helper rules it generates."""
    if not frame.has_item:
        raise GrammarLimitError(rule, "a repeat with nothing before it to repeat")
    if low > MAX_REPETITION_THRESHOLD:
        raise GrammarLimitError(
            rule, f"repeat count {low} exceeds llama.cpp's limit of {MAX_REPETITION_THRESHOLD}"
        )
    if high > MAX_REPETITION_THRESHOLD:
        raise GrammarLimitError(
            rule,
            f"repeat count {high} exceeds llama.cpp's limit of {MAX_REPETITION_THRESHOLD} "
            "(llama.cpp would read it as unbounded)",
        )
    count = high if high > 0 else low if low > 0 else 1
    if frame.n_prev_rules * count > MAX_REPETITION_THRESHOLD:
        raise GrammarLimitError(
            rule,
            f"a repeated group of {frame.n_prev_rules} rules times {count} repeats exceeds llama.cpp's "
            f'limit of {MAX_REPETITION_THRESHOLD} ("exceeds sane defaults")',
        )
    counter.generated += 1 if high == _UNBOUNDED else high - low
    frame.n_prev_rules *= count
    frame.has_item = high != 0  # `x{0}` leaves nothing behind


def _check_body(text: str, index: int, rule: str, counter: _Counter) -> int:
    """Read one rule's alternatives from `index`; returns where they end."""
    stack = [_Sequence()]
    while True:
        frame = stack[-1]
        nested = len(stack) > 1
        if index >= len(text):
            break
        char = text[index]
        if char in '"[':
            index = _skip_space(text, _skip_terminal(text, index, rule), nested)
            frame.n_prev_rules, frame.has_item = 1, True
        elif char in "<!":
            end = text.find(">", index)
            if end < 0:
                raise GrammarLimitError(rule, "unterminated token")
            index = _skip_space(text, end + 1, nested)
            frame.n_prev_rules, frame.has_item = 1, True
        elif (name := _NAME.match(text, index)) is not None:
            counter.name(name.group())
            index = _skip_space(text, name.end(), nested)
            frame.n_prev_rules, frame.has_item = 1, True
        elif char == "(":
            if len(stack) > MAX_GROUP_DEPTH:
                raise GrammarLimitError(rule, f"groups nested more than {MAX_GROUP_DEPTH} deep")
            before = counter.size
            counter.generated += 1  # the group's own rule
            stack.append(_Sequence(rules_before_group=before))
            index = _skip_space(text, index + 1, True)
        elif char == "|":
            stack[-1] = _Sequence(rules_before_group=frame.rules_before_group)
            index = _skip_space(text, index + 1, True)
        elif char == ")" and nested:
            stack.pop()
            stack[-1].n_prev_rules = max(1, counter.size - frame.rules_before_group)
            stack[-1].has_item = True
            index = _skip_space(text, index + 1, len(stack) > 1)
        elif char == ".":
            index = _skip_space(text, index + 1, nested)
            frame.n_prev_rules, frame.has_item = 1, True
        elif char in "*+?":
            index = _skip_space(text, index + 1, nested)
            _repeat(frame, counter, 1 if char == "+" else 0, 1 if char == "?" else _UNBOUNDED, rule)
        elif char == "{":
            low, high, index = _read_braces(text, index + 1, rule, nested)
            _repeat(frame, counter, low, high, rule)
        else:
            break
    if len(stack) > 1:
        raise GrammarLimitError(rule, "unclosed group")
    return index


def check_llama_limits(gbnf: str) -> None:
    """Raise `GrammarLimitError` if llama.cpp would refuse `gbnf` for size, or crash on its depth."""
    counter = _Counter()
    index = _skip_space(gbnf, 0, True)
    while index < len(gbnf):
        match = _NAME.match(gbnf, index)
        if match is None:
            raise GrammarLimitError("?", f"expecting a rule name at {gbnf[index : index + 20]!r}")
        name = match.group()
        counter.name(name)
        index = _skip_space(gbnf, match.end(), False)
        if not gbnf.startswith("::=", index):
            raise GrammarLimitError(name, f"expecting ::= at {gbnf[index : index + 20]!r}")
        index = _check_body(gbnf, _skip_space(gbnf, index + 3, True), name, counter)
        if index < len(gbnf) and gbnf[index] not in "\r\n":
            raise GrammarLimitError(name, f"expecting a newline at {gbnf[index : index + 20]!r}")
        index = _skip_space(gbnf, index, True)
