"""The GBNF grammar of a catalogue's canonical outputs, for llama.cpp's grammar sampler.

`root` accepts exactly `{"tool":"<name>","arguments":{...}}` for each tool (arguments in
canonical form: schema key order, no whitespace, canonical string escapes and numbers) and
`{"tool":"no_tool","reason":"..."}`. Strings, arrays and numbers are capped by `GrammarOptions`
so that a generation always ends.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field

from .canonical import dump_value, json_string
from .catalogue import Catalogue
from .errors import CatalogueError
from .llama_limits import MAX_REPETITION_THRESHOLD, GrammarLimitError, check_llama_limits
from .numbers import Bound, integer_range, number_range
from .patterns import gbnf_literal, pattern_gbnf
from .schema import Schema
from .tool import NO_TOOL

# One canonical JSON string character: json.dumps(ensure_ascii=False) escapes only these.
_JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\bfnrt] | "u000" [0-7bef] | "u001" [0-9a-f])'

_DATE = (
    '(year "-" ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
    ' | year "-" ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
    ' | year "-02-" ("0" [1-9] | "1" [0-9] | "2" [0-8])'
    ' | leap-year "-02-29")'
)
_FORMAT_RULES = {
    # Year 0000 does not exist in Python's calendar; leap years follow the Gregorian rule.
    "year": '[0-9] [0-9] [0-9] [1-9] | [0-9] [0-9] [1-9] "0" | [0-9] [1-9] "00" | [1-9] "000"',
    "leap-year": (
        '[0-9] [0-9] ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | [13579] [26]) "00"'
    ),
    "date": _DATE,
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})?'
        ' ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])?'
    ),
    "date-time": 'date "T" time',
}


class GrammarOptions(BaseModel):
    """Caps that keep every generation finite. Part of what a router file embeds.

    The repeat caps stop at llama.cpp's repetition limit: above it llama.cpp reads `x{0,n}` as
    unbounded, and a cap that silently stops capping is no cap.
    """

    model_config = ConfigDict(frozen=True)

    max_string_length: int = Field(
        256, ge=1, le=MAX_REPETITION_THRESHOLD, description="code points in any unbounded string"
    )
    max_reason_length: int = Field(
        160, ge=1, le=MAX_REPETITION_THRESHOLD, description="code points in a no_tool reason"
    )
    max_array_items: int = Field(
        16, ge=1, le=MAX_REPETITION_THRESHOLD, description="items in an array without maxItems"
    )
    max_int_digits: int = Field(15, ge=1, le=30, description="digits before the decimal point")
    max_frac_digits: int = Field(15, ge=1, le=30, description="digits after the decimal point")


def _rule_name(hint: str) -> str:
    name = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-").lower()
    return name or "r"


class _Builder:
    def __init__(self, options: GrammarOptions) -> None:
        self.options = options
        self.rules: dict[str, str] = {}
        self.by_body: dict[str, str] = {}
        self.formats: set[str] = set()
        self.tool = NO_TOOL  # the tool whose rules are being written
        self.tool_of: dict[str, str] = {}

    def rule(self, hint: str, body: str) -> str:
        """Name a body, reusing the name of an identical body."""
        if body in self.by_body:
            return self.by_body[body]
        name = base = _rule_name(hint)
        index = 2
        while name in self.rules or name in _FORMAT_RULES or name in ("root", "char"):
            name, index = f"{base}-{index}", index + 1
        self.rules[name] = body
        self.by_body[body] = name
        self.tool_of[name] = self.tool
        return name

    def string(self, low: int, high: int) -> str:
        high = min(high, self.options.max_string_length)
        if low > high:
            raise ValueError(f"minLength {low} exceeds the grammar's max_string_length {high}")
        repeat = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
        return f'"\\"" char{repeat} "\\""'

    def value(self, schema: Schema, hint: str) -> str:
        """A GBNF expression for the canonical text of values of `schema`."""
        if "const" in schema:
            return gbnf_literal(dump_value(schema["const"], schema))
        if "enum" in schema:
            return "(" + " | ".join(gbnf_literal(dump_value(v, schema)) for v in schema["enum"]) + ")"
        if "anyOf" in schema:
            options = [self.value(branch, f"{hint}-{i}") for i, branch in enumerate(schema["anyOf"])]
            return self.rule(hint, " | ".join(options))
        kind = schema["type"]
        if kind == "string":
            return self._string_value(schema, hint)
        if kind == "integer":
            body = integer_range(schema.get("minimum"), schema.get("maximum"), self.options.max_int_digits)
            return self.rule(hint if schema.keys() & {"minimum", "maximum"} else "integer", body)
        if kind == "number":
            return self._number_value(schema, hint)
        if kind == "boolean":
            return '("true" | "false")'
        if kind == "null":
            return '"null"'
        if kind == "array":
            return self._array(schema, hint)
        return self.object(schema, hint)

    def _string_value(self, schema: Schema, hint: str) -> str:
        if "format" in schema:
            self.formats.add(schema["format"])
            return f'"\\"" {schema["format"]} "\\""'
        if "pattern" in schema:
            body = pattern_gbnf(
                schema["pattern"],
                "char",
                self.options.max_string_length,
                lambda part: self.rule(f"{hint}-part", part),
            )
            return self.rule(hint, f'"\\"" {body} "\\""')
        body = self.string(
            schema.get("minLength", 0), schema.get("maxLength", self.options.max_string_length)
        )
        return self.rule("string" if schema.keys().isdisjoint({"minLength", "maxLength"}) else hint, body)

    def _number_value(self, schema: Schema, hint: str) -> str:
        low = high = None
        if "minimum" in schema:
            low = Bound(schema["minimum"], True)
        if "exclusiveMinimum" in schema:
            low = Bound(schema["exclusiveMinimum"], False)
        if "maximum" in schema:
            high = Bound(schema["maximum"], True)
        if "exclusiveMaximum" in schema:
            high = Bound(schema["exclusiveMaximum"], False)
        body = number_range(low, high, self.options.max_int_digits, self.options.max_frac_digits)
        return self.rule(hint if low or high else "number", body)

    def _array(self, schema: Schema, hint: str) -> str:
        item = self.value(schema["items"], f"{hint}-item")
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", self.options.max_array_items), self.options.max_array_items)
        if low > high:
            raise ValueError(f"minItems {low} exceeds the grammar's max_array_items {high}")
        if high == 0:
            return '"[]"'
        rest = "" if high == 1 else f' ("," {item}){{{max(low - 1, 0)},{high - 1}}}'
        items = f"{item}{rest}"
        body = f'"[" {items} "]"' if low >= 1 else f'"[" ({items})? "]"'
        return self.rule(hint, body)

    def choice(self, hint: str, options: list[str | None]) -> str | None:
        """Alternatives, where None is the empty string; named when there are several."""
        present = [o for o in options if o is not None]
        if not present:
            return None
        expr = present[0] if len(present) == 1 else self.rule(hint, " | ".join(present))
        if len(present) == 1 and " " in expr and not expr.startswith("("):
            expr = f"({expr})"
        return f"{expr}?" if None in options else expr

    def object(self, schema: Schema, hint: str) -> str:
        """Properties in schema order, each optional one present or absent, commas exact.

        Built from the last property back: `first` = what may follow when nothing has been
        emitted yet, `more` = what may follow after a property (so it starts with a comma).
        Naming both at each step keeps the grammar linear in the number of properties.
        """
        properties = list(schema["properties"].items())
        if not properties:
            return '"{}"'
        required = set(schema["required"])
        first: str | None = None
        more: str | None = None
        for name, prop in reversed(properties):
            pair = f"{gbnf_literal(json_string(name) + ':')} {self.value(prop, f'{hint}-{name}')}"
            with_pair = " ".join(p for p in (pair, more) if p)
            optional = name not in required
            first, more = (
                self.choice(f"{hint}-{name}-first", [with_pair, first] if optional else [with_pair]),
                self.choice(
                    f"{hint}-{name}-more", [f'"," {with_pair}', more] if optional else [f'"," {with_pair}']
                ),
            )
        return self.rule(hint, " ".join(p for p in ('"{"', first, '"}"') if p))


# Which format rules each format needs, itself included.
_FORMAT_DEPENDENCIES = {
    "date": ("date", "year", "leap-year"),
    "time": ("time",),
    "date-time": ("date-time", "date", "year", "leap-year", "time"),
}


def catalogue_gbnf(
    catalogue: Catalogue,
    options: GrammarOptions | None = None,
    *,
    calls: bool = True,
    no_tool: bool = True,
) -> str:
    """The GBNF grammar accepting exactly the canonical outputs for `catalogue`.

    `no_tool=False` leaves the no_tool output out (a call is required: a server's
    `tool_choice: "required"` or a named function); `calls=False` leaves every call out (only
    no_tool: `tool_choice: "none"`). The header still names the catalogue the grammar was cut from.
    """
    if not (calls or no_tool):
        raise ValueError("a grammar needs calls, no_tool or both: with neither it accepts nothing")
    options = options or GrammarOptions()
    builder = _Builder(options)
    outputs = []
    for tool in catalogue if calls else ():
        builder.tool = tool.name
        arguments = builder.object(tool.parameters, f"{tool.name}-arguments")
        prefix = gbnf_literal(f'{{"tool":{json_string(tool.name)},"arguments":')
        outputs.append(builder.rule(f"call-{tool.name}", f'{prefix} {arguments} "}}"'))
    if no_tool:
        reason = f'"\\"" char{{1,{options.max_reason_length}}} "\\""'
        no_tool_prefix = gbnf_literal(f'{{"tool":"{NO_TOOL}","reason":')
        builder.tool = NO_TOOL
        outputs.append(builder.rule(NO_TOOL, f'{no_tool_prefix} {reason} "}}"'))
    formats = {dep for fmt in builder.formats for dep in _FORMAT_DEPENDENCIES[fmt]}
    described = [f"{len(catalogue)} tools" if calls else "no tools", *([NO_TOOL] if no_tool else [])]
    lines = [
        f"# toolroute grammar: {' + '.join(described)}; catalogue sha256 {catalogue.sha256}",
        f"# options: {json.dumps(options.model_dump(), separators=(',', ':'))}",
        f"root ::= {' | '.join(outputs)}",
        *(f"{name} ::= {body}" for name, body in builder.rules.items()),
        f"char ::= {_JSON_CHAR}",
        *(f"{name} ::= {body}" for name, body in _FORMAT_RULES.items() if name in formats),
    ]
    gbnf = "\n".join(lines) + "\n"
    try:
        check_llama_limits(gbnf)
    except GrammarLimitError as exc:
        tool = builder.tool_of.get(exc.rule)
        owner = f"tool '{tool}': " if tool and tool != NO_TOOL else ""
        raise CatalogueError(f"{owner}{exc}; llama.cpp would refuse this grammar") from None
    return gbnf
