"""Translate a JSON Schema `pattern` into GBNF over the JSON-escaped string body.

Python's own regex parser reads the pattern; the supported subset is literals, classes
(`[...]`, `\\d \\w \\s` with ASCII meaning, `.`), groups, alternation, and greedy or lazy
repeats. `^`/`$` may only anchor the ends; an unanchored end may carry any other text (JSON
Schema patterns search, they do not fullmatch). Lookarounds, back-references and the like are
refused.

Length caps: an unanchored end admits up to the grammar's maximum string length; a repeat admits
as many rounds as fit in that length (the length over the shortest text one round can match), so
every matching string within the cap is accepted. A repeated part that holds a group or repeat of
its own becomes a named rule: llama.cpp multiplies a repeated group's inner rules by the repeat
count and refuses products over 2000 (see `llama_limits`), while a repeated rule name counts once,
so `^(\\w+ )*\\w+$` costs the sum of its repeats, not their product.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]

from .llama_limits import MAX_REPETITION_THRESHOLD, GrammarLimitError, check_llama_limits

MAX_CODEPOINT = 0x10FFFF
# Groups nested deeper than this are refused: no real pattern needs it, and translation recurses.
MAX_PATTERN_DEPTH = 32
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


@dataclass(frozen=True)
class _Expr:
    """A translated piece of pattern."""

    text: str
    min_length: int  # the fewest code points it matches
    flat: bool  # only literals and classes: llama.cpp counts it as one rule when it is repeated


_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None))


class _Translator:
    def __init__(self, max_length: int, name_rule: Callable[[str], str]) -> None:
        self.max_length = max_length
        self.name_rule = name_rule
        self.depth = 0

    def sequence(self, items: list) -> _Expr:
        parts: list[str] = []
        literal = ""
        min_length = 0
        flat = True
        for op, arg in items:
            if op is C.LITERAL:  # runs of literal characters become one GBNF string
                literal += json_escape_code(arg)
                min_length += 1
                continue
            if literal:
                parts.append(gbnf_literal(literal))
                literal = ""
            expr = self.item(op, arg)
            parts.append(expr.text)
            min_length += expr.min_length
            flat = flat and expr.flat
        if literal:
            parts.append(gbnf_literal(literal))
        return _Expr(" ".join(parts) or '""', min_length, flat)

    def nested(self, items: list) -> _Expr:
        self.depth += 1
        if self.depth > MAX_PATTERN_DEPTH:
            raise PatternError(f"groups and repeats nested more than {MAX_PATTERN_DEPTH} deep")
        try:
            return self.sequence(items)
        finally:
            self.depth -= 1

    def item(self, op: object, arg: object) -> _Expr:
        if op is C.LITERAL:
            return _Expr(gbnf_literal(json_escape_code(arg)), 1, True)  # type: ignore[arg-type]
        if op is C.NOT_LITERAL:
            return _char_set(_complement([(arg, arg)]))  # type: ignore[list-item]
        if op is C.ANY:
            return _char_set(_complement([(0x0A, 0x0A)]))
        if op is C.IN:
            return _char_set(self.char_class(arg))  # type: ignore[arg-type]
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg  # type: ignore[misc]
            if add_flags or del_flags:
                raise PatternError("inline regex flags are not supported")
            inner = self.nested(list(sub))
            return _Expr(f"({inner.text})", inner.min_length, False)
        if op is C.BRANCH:
            _, branches = arg  # type: ignore[misc]
            options = [self.nested(list(b)) for b in branches]
            text = "(" + " | ".join(o.text for o in options) + ")"
            return _Expr(text, min(o.min_length for o in options), False)
        if op in _REPEATS:
            return self.repeat(*arg)  # type: ignore[misc]
        if op is C.AT:
            raise PatternError("anchors (^, $, \\b) are only supported at the ends of the pattern")
        raise PatternError(f"regex feature {str(op).lower()} is not supported")

    def repeat(self, low: int, high: object, sub: object) -> _Expr:
        if low > MAX_REPETITION_THRESHOLD:
            raise PatternError(
                f"repeat count {low} exceeds the {MAX_REPETITION_THRESHOLD} that llama.cpp's grammars allow"
            )
        inner = self.nested(list(sub))  # type: ignore[call-overload]
        # More rounds than fit in the longest string the grammar writes could never be used.
        rounds = max(low, self.max_length // max(1, inner.min_length))
        top = rounds if high is C.MAXREPEAT else min(int(high), rounds)  # type: ignore[call-overload]
        # A repeated group is expanded by llama.cpp with all its inner rules (and that count is
        # capped); a repeated rule name is one rule, so a body with structure of its own is named.
        body = f"({inner.text})" if inner.flat else self.name_rule(inner.text)
        count = f"{{{low}}}" if low == top else f"{{{low},{top}}}"
        return _Expr(body + count, low * inner.min_length, False)

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


def _char_set(ranges: Ranges) -> _Expr:
    text = char_set_gbnf(ranges)
    return _Expr(text, 1, not text.startswith("("))


_STARTS = {C.AT_BEGINNING, C.AT_BEGINNING_STRING}
_ENDS = {C.AT_END, C.AT_END_STRING}


def pattern_gbnf(pattern: str, any_char: str, max_length: int, name_rule: Callable[[str], str]) -> str:
    """GBNF for the JSON-escaped body of strings in which `pattern` finds a match.

    `name_rule(body)` defines a grammar rule with that body and returns its name; repeated parts
    with inner structure are written as named rules (see the module docstring).
    """
    try:
        parsed = list(P.parse(pattern))
    except re.error as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    except RecursionError:
        raise PatternError(f"groups nested more than {MAX_PATTERN_DEPTH} deep") from None
    translator = _Translator(max_length, name_rule)
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
            + [translator.sequence(core).text]
            + ([] if anchored_end else [free])
        )
        out.append(" ".join(parts))
    return out[0] if len(out) == 1 else "(" + " | ".join(out) + ")"


def check_pattern(pattern: str) -> None:
    """Raise `PatternError` unless `pattern` has a GBNF translation that llama.cpp loads.

    Translated at the largest string cap `GrammarOptions` allows, so a pattern that passes here
    loads at every cap, and checked with llama.cpp's own counting (`check_llama_limits`).
    """
    rules: dict[str, str] = {}

    def name_rule(body: str) -> str:
        name = f"pattern-part-{len(rules) + 1}"
        rules[name] = body
        return name

    body = pattern_gbnf(pattern, "char", MAX_REPETITION_THRESHOLD, name_rule)
    grammar = [f'root ::= "\\"" {body} "\\""', *(f"{n} ::= {b}" for n, b in rules.items()), "char ::= [a]"]
    try:
        check_llama_limits("\n".join(grammar) + "\n")
    except GrammarLimitError as exc:
        raise PatternError(f"its grammar is more than llama.cpp accepts: {exc.detail}") from None
