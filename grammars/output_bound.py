"""The longest output a GBNF grammar admits, in bytes: the runtime's completion budget.

Every token the grammar lets through spells at least one byte (llama.cpp's grammar sampler
refuses empty pieces), so a grammar whose longest sentence is N bytes can never need more
than N tokens, plus one end-of-generation token. toolroute's grammars are finite by
construction (`GrammarOptions` caps strings, arrays and digits); a grammar with an unbounded
repeat or a recursive rule has no bound and gives None.
"""

from __future__ import annotations

import math
import re

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^"}


class _Unsupported(ValueError):
    pass


def _utf8_len(code_point: int) -> int:
    return 1 if code_point < 0x80 else 2 if code_point < 0x800 else 3 if code_point < 0x10000 else 4


class _Parser:
    """A recursive-descent reading of llama.cpp's GBNF, returning the max byte length of each part."""

    def __init__(self, text: str) -> None:
        self.rules: dict[str, str] = {}
        for name, body in _split_rules(text):
            self.rules[name] = body
        self.memo: dict[str, float] = {}
        self.active: set[str] = set()

    def rule(self, name: str) -> float:
        if name in self.memo:
            return self.memo[name]
        if name in self.active or name not in self.rules:
            return math.inf  # recursion (unbounded) or an undefined rule
        self.active.add(name)
        body = self.rules[name]
        value, end = self.alternatives(body, 0)
        if end != len(body):
            raise _Unsupported(f"rule {name}: cannot read {body[end : end + 20]!r}")
        self.active.discard(name)
        self.memo[name] = value
        return value

    def skip(self, text: str, index: int) -> int:
        while index < len(text):
            if text[index].isspace():
                index += 1
            elif text[index] == "#":
                while index < len(text) and text[index] != "\n":
                    index += 1
            else:
                break
        return index

    def alternatives(self, text: str, index: int) -> tuple[float, int]:
        best, index = self.sequence(text, index)
        while index < len(text) and text[index] == "|":
            value, index = self.sequence(text, index + 1)
            best = max(best, value)
        return best, index

    def sequence(self, text: str, index: int) -> tuple[float, int]:
        total = 0.0
        index = self.skip(text, index)
        while index < len(text) and text[index] not in "|)":
            value, index = self.element(text, index)
            value, index = self.repeat(text, index, value)
            total += value
            index = self.skip(text, index)
        return total, index

    def repeat(self, text: str, index: int, value: float) -> tuple[float, int]:
        if index >= len(text):
            return value, index
        char = text[index]
        if char == "?":
            return value, index + 1
        if char in "*+":
            return (math.inf if value > 0 else 0.0), index + 1
        if char == "{" and (match := _REPEAT.match(text, index)):
            low, comma, high = match.groups()
            if comma and not high:
                return (math.inf if value > 0 else 0.0), match.end()
            count = int(high) if comma else int(low)
            return value * count, match.end()
        return value, index

    def element(self, text: str, index: int) -> tuple[float, int]:
        char = text[index]
        if char == '"':
            return self.literal(text, index + 1)
        if char == "[":
            return self.char_class(text, index + 1)
        if char == ".":
            return 4.0, index + 1
        if char == "(":
            value, index = self.alternatives(text, index + 1)
            if index >= len(text) or text[index] != ")":
                raise _Unsupported("unclosed group")
            return value, index + 1
        if match := _NAME.match(text, index):
            return self.rule(match.group()), match.end()
        raise _Unsupported(f"unexpected {text[index : index + 20]!r}")

    def escape(self, text: str, index: int) -> tuple[int, int]:
        """The code point of the escape starting after a backslash at `index`."""
        char = text[index]
        widths = {"x": 2, "u": 4, "U": 8}
        if char in widths:
            digits = text[index + 1 : index + 1 + widths[char]]
            return int(digits, 16), index + 1 + widths[char]
        if char in _ESCAPES:
            return ord(_ESCAPES[char]), index + 1
        raise _Unsupported(f"unknown escape \\{char}")

    def code_at(self, text: str, index: int) -> tuple[int, int]:
        """The code point at `index` (a GBNF escape or a plain character) and where the next starts."""
        if text[index] == "\\":
            return self.escape(text, index + 1)
        return ord(text[index]), index + 1

    def literal(self, text: str, index: int) -> tuple[float, int]:
        size = 0
        while index < len(text) and text[index] != '"':
            code, index = self.code_at(text, index)
            size += _utf8_len(code)
        if index >= len(text):
            raise _Unsupported("unterminated literal")
        return float(size), index + 1

    def char_class(self, text: str, index: int) -> tuple[float, int]:
        negated = index < len(text) and text[index] == "^"
        index += negated
        widest = 1
        while index < len(text) and text[index] != "]":
            code, index = self.code_at(text, index)
            widest = max(widest, _utf8_len(code))
        if index >= len(text):
            raise _Unsupported("unterminated character class")
        return float(4 if negated else widest), index + 1


def _split_rules(text: str) -> list[tuple[str, str]]:
    """`name ::= body` rules; a body runs until the next line that starts a rule."""
    rules: list[tuple[str, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_-]+)\s*::=(.*)", stripped)
        if match:
            rules.append((match.group(1), match.group(2)))
        elif rules:
            name, body = rules[-1]
            rules[-1] = (name, body + "\n" + line)
        else:
            raise _Unsupported(f"text before the first rule: {stripped[:40]!r}")
    return rules


# A grammar with no finite bound (never one toolroute writes) gets this many completion tokens.
FALLBACK_COMPLETION_TOKENS = 1024


def completion_token_budget(gbnf: str) -> int:
    """The completion tokens an output of `gbnf` may need: one token spells at least one byte, so
    the grammar's byte bound, plus the end-of-generation token. No valid output is ever cut short."""
    bound = gbnf_max_bytes(gbnf)
    return FALLBACK_COMPLETION_TOKENS if bound is None else bound + 1


def gbnf_max_bytes(gbnf: str, root: str = "root") -> int | None:
    """The byte length of the longest text `gbnf` accepts; None if unbounded or unreadable."""
    try:
        value = _Parser(gbnf).rule(root)
    except (_Unsupported, ValueError, IndexError):
        return None
    return None if math.isinf(value) else int(value)
