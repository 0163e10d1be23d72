"""Translate a JSON Schema `pattern` into GBNF over the JSON-escaped string body.

Python's own regex parser reads the pattern; the supported subset is literals, classes
(`[...]`, `\\d \\w \\s` with ASCII meaning, `.`), groups, alternation, and greedy or lazy
repeats. `^`/`$` may only anchor the ends; an unanchored end may carry any other text (JSON
Schema patterns search, they do not fullmatch). Unbounded repeats and unanchored ends are capped
at the grammar's maximum string length. Lookarounds, back-references and the like are refused.
"""

from __future__ import annotations

import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]

MAX_CODEPOINT = 0x10FFFF
Ranges = list[tuple[int, int]]

_CATEGORIES: dict[object, Ranges] = {
    C.CATEGORY_DIGIT: [(0x30, 0x39)],
    C.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    C.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20)],
}
_NEGATED = {
    C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT,
    C.CATEGORY_NOT_WORD: C.CATEGORY_WORD,
    C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE,
}
# Code points that JSON writes escaped: they cannot sit in a plain GBNF character class.
_SPECIAL: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]
_SHORT_ESCAPES = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r", 0x22: '"', 0x5C: "\\"}


class PatternError(ValueError):
    """The pattern uses a regex feature the grammar cannot express."""


def _normalize(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 0
    for low, high in _normalize(ranges):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= MAX_CODEPOINT:
        out.append((start, MAX_CODEPOINT))
    return out


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    return _complement(_complement(a) + _complement(b))


def _class_char(code: int) -> str:
    if 0x21 <= code <= 0x7E and chr(code) not in "]\\^-[":
        return chr(code)
    if code <= 0xFF:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def json_escape_code(code: int) -> str:
    """The JSON text (inside quotes) of one code point, as `json.dumps(ensure_ascii=False)`."""
    if code in _SHORT_ESCAPES:
        return "\\" + _SHORT_ESCAPES[code]
    if code < 0x20:
        return f"\\u{code:04x}"
    return chr(code)


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code <= 0x7E:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02X}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    return '"' + "".join(out) + '"'


def char_set_gbnf(ranges: Ranges) -> str:
    """GBNF matching the JSON-escaped spelling of any one code point in `ranges`."""
    ranges = _normalize(ranges)
    plain = _intersect(ranges, _complement(_SPECIAL))
    options = []
    if plain:
        body = "".join(
            _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in plain
        )
        options.append(f"[{body}]")
    for low, high in _intersect(ranges, _SPECIAL):
        options += [gbnf_literal(json_escape_code(code)) for code in range(low, high + 1)]
    if not options:
        raise PatternError("a character class that matches nothing")
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"


class _Translator:
    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def sequence(self, items: list) -> str:
        parts: list[str] = []
        literal = ""
        for op, arg in items:
            if op is C.LITERAL:  # runs of literal characters become one GBNF string
                literal += json_escape_code(arg)
                continue
            if literal:
                parts.append(gbnf_literal(literal))
                literal = ""
            parts.append(self.item(op, arg))
        if literal:
            parts.append(gbnf_literal(literal))
        return " ".join(parts) or '""'

    def item(self, op: object, arg: object) -> str:
        if op is C.LITERAL:
            return gbnf_literal(json_escape_code(arg))  # type: ignore[arg-type]
        if op is C.NOT_LITERAL:
            return char_set_gbnf(_complement([(arg, arg)]))  # type: ignore[list-item]
        if op is C.ANY:
            return char_set_gbnf(_complement([(0x0A, 0x0A)]))
        if op is C.IN:
            return char_set_gbnf(self.char_class(arg))  # type: ignore[arg-type]
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg  # type: ignore[misc]
            if add_flags or del_flags:
                raise PatternError("inline regex flags are not supported")
            return f"({self.sequence(list(sub))})"
        if op is C.BRANCH:
            _, branches = arg  # type: ignore[misc]
            return "(" + " | ".join(self.sequence(list(b)) for b in branches) + ")"
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg  # type: ignore[misc]
            high = self.max_length if high is C.MAXREPEAT else high
            inner = self.sequence(list(sub))
            if low == high:
                return f"({inner}){{{low}}}"
            return f"({inner}){{{low},{max(low, high)}}}"
        if op is C.AT:
            raise PatternError("anchors (^, $, \\b) are only supported at the ends of the pattern")
        raise PatternError(f"regex feature {str(op).lower()} is not supported")

    def char_class(self, items: list) -> Ranges:
        ranges: Ranges = []
        negate = False
        for op, arg in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                ranges.append((arg, arg))
            elif op is C.RANGE:
                ranges.append(arg)
            elif op is C.CATEGORY:
                if arg in _CATEGORIES:
                    ranges += _CATEGORIES[arg]
                elif arg in _NEGATED:
                    ranges += _complement(_CATEGORIES[_NEGATED[arg]])
                else:
                    raise PatternError(f"character category {arg} is not supported")
            else:
                raise PatternError(f"class item {str(op).lower()} is not supported")
        return _complement(ranges) if negate else _normalize(ranges)


_STARTS = {C.AT_BEGINNING, C.AT_BEGINNING_STRING}
_ENDS = {C.AT_END, C.AT_END_STRING}


def pattern_gbnf(pattern: str, any_char: str, max_length: int) -> str:
    """GBNF for the JSON-escaped body of strings in which `pattern` finds a match."""
    try:
        parsed = list(P.parse(pattern))
    except re.error as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    translator = _Translator(max_length)
    branches: list[list] = [parsed]
    if len(parsed) == 1 and parsed[0][0] is C.BRANCH:
        branches = [list(b) for b in parsed[0][1][1]]
    out = []
    for items in branches:
        anchored_start = bool(items) and items[0][0] is C.AT and items[0][1] in _STARTS
        anchored_end = bool(items) and items[-1][0] is C.AT and items[-1][1] in _ENDS
        core = items[int(anchored_start) : len(items) - int(anchored_end)]
        free = f"{any_char}{{0,{max_length}}}"
        parts = (
            ([] if anchored_start else [free])
            + [translator.sequence(core)]
            + ([] if anchored_end else [free])
        )
        out.append(" ".join(parts))
    return out[0] if len(out) == 1 else "(" + " | ".join(out) + ")"
