"""Fuzzing the inputs users hand toolroute: training rows, tool catalogues, model output text.

Each property says: every input gets a clear error (the documented exception type, a message that
names where) or a correct result (checked, not just "no crash"), and nothing else escapes.
Examples are bounded so the default suite stays fast; the `_slow` twins (`make test-slow`) run
many more of the same.
"""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import json
import keyword
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydantic import Field, create_model

from support import CUSTOMER_SUPPORT_TOOLS, accepts, all_catalogues, values
from toolroute.grammars import (
    NO_TOOL,
    Catalogue,
    CatalogueError,
    GrammarOptions,
    NoTool,
    ToolCall,
    catalogue_gbnf,
    load_catalogue,
    make_call,
    parse_tool_call,
    serialize_call,
    serialize_no_tool,
)
from toolroute.runtime.grammar_engine import check_grammar_loads
from toolroute.train.formats import read_examples

SUPPORT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
OPTIONS = GrammarOptions(max_string_length=12, max_reason_length=12, max_array_items=3)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))

# Text with the characters that have broken readers before: line separators json.dumps leaves raw,
# NUL and controls, quotes and braces, surrogate-free astral characters.
TRICKY = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\u2028", "\u2029", "\u0085", "\x00", "\r", '"', "{", "}", "\\", "<|im_end|>"]),
    ),
    max_size=12,
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=8,
)


# -- 1. training rows: the three formats, valid and mutated ---------------------------------------


@st.composite
def valid_rows(draw: Any) -> tuple[dict[str, Any], str, dict[str, Any] | str]:
    """(row, format, expected target: the arguments of a call, or a no_tool reason)."""
    request = draw(TRICKY) + draw(st.sampled_from(["where is ORD-1?", "x", "退款"]))
    user = {"role": "user", "content": request}
    system = draw(st.sampled_from([[], [{"role": "system", "content": "route"}]]))
    tool = draw(st.sampled_from([*SUPPORT.names, NO_TOOL]))
    kind = draw(st.sampled_from(["router", "openai", "legacy"]))
    if tool == NO_TOOL:
        reason = draw(st.sampled_from(["chat", "no order id", "—"])) + draw(TRICKY)
        content = serialize_no_tool(reason) if kind == "router" else reason
        expected: dict[str, Any] | str = reason if kind == "router" else reason.strip()
        messages = [*system, user, {"role": "assistant", "content": content}]
        return {"messages": messages}, "router" if kind == "router" else "openai", expected
    arguments = draw(values(SUPPORT.get(tool).parameters, OPTIONS))
    if kind == "router":
        answer = {"role": "assistant", "content": serialize_call(SUPPORT, tool, arguments)}
        return {"messages": [*system, user, answer]}, kind, arguments
    text = json.dumps(arguments, ensure_ascii=draw(st.booleans()))
    if kind == "openai":
        call = {"id": "c1", "type": "function", "function": {"name": tool, "arguments": text}}
        answer = {"role": "assistant", "tool_calls": [call]}
        followup = draw(st.sampled_from([[], [{"role": "tool", "tool_call_id": "c1", "content": "ok"}]]))
        row: dict[str, Any] = {"messages": [*system, user, answer, *followup]}
        if draw(st.booleans()):
            row["tools"] = SUPPORT.to_openai()
        return row, kind, arguments
    answer = {"role": "assistant", "function_call": {"name": tool, "arguments": text}}
    functions = [t["function"] for t in SUPPORT.to_openai()]
    return {"messages": [*system, user, answer], "functions": functions}, kind, arguments


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_lines(draw: Any) -> str:
    """A valid row's JSONL line, then damaged: a node replaced or removed, or the text cut or spliced."""
    row = json.loads(json.dumps(draw(valid_rows())[0]))
    how = draw(st.sampled_from(["replace", "delete", "cut", "splice", "none"]))
    if how in ("replace", "delete"):
        path = draw(st.sampled_from(_paths(row)[1:]))
        parent = row
        for step in path[:-1]:
            parent = parent[step]
        if how == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        else:
            del parent[path[-1]]
    line = json.dumps(row, ensure_ascii=False)
    if how == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif how == "splice":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(TRICKY) + line[at:]
    return line


def _check_rows(tmp_path: Path, data: Any) -> None:
    rows = data.draw(st.lists(st.one_of(valid_rows(), mutated_lines()), min_size=1, max_size=5))
    lines = [json.dumps(r[0], ensure_ascii=False) if isinstance(r, tuple) else r for r in rows]
    # A spliced "\n" starts a new line: the reader must count lines exactly as the file has them.
    path = tmp_path / "rows.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    physical = path.read_bytes().split(b"\n")[:-1]
    expected_lines = {n for n, raw in enumerate(physical, start=1) if raw.strip()}

    result = read_examples(path, SUPPORT)

    example_lines = {int(e.source.rsplit(":", 1)[1]) for e in result.examples}
    error_lines = {e.line for e in result.errors}
    assert not example_lines & error_lines and example_lines | error_lines == expected_lines
    for error in result.errors:
        assert str(error).startswith(f"{path}:{error.line}: ") and error.message.strip()
    for example in result.examples:  # a correct result: exactly what a router could be trained on
        target = example.target
        if target.is_no_tool:
            assert target.reason and target.reason.strip()
        else:
            assert make_call(SUPPORT, target.tool, target.arguments).tool == target.tool
    for number, row in enumerate(rows, start=1):  # the undamaged rows read back to their targets
        if isinstance(row, tuple) and len(physical) == len(rows):
            (example,) = [e for e in result.examples if e.source.endswith(f":{number}")]
            _, kind, expected = row
            if isinstance(expected, str):
                assert example.target.tool == NO_TOOL and example.target.reason == expected
            else:
                assert example.target.arguments == expected
            assert result.formats[kind] >= 1


@FAST
@given(data=st.data())
def test_training_rows_read_or_error_by_line(tmp_path_factory, data):
    _check_rows(tmp_path_factory.mktemp("rows"), data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_training_rows_read_or_error_by_line_slow(tmp_path_factory, data):
    _check_rows(tmp_path_factory.mktemp("rows"), data)


# -- 2. catalogues: OpenAI JSON, Pydantic models, typed functions, through the grammar --------------

# Identifiers that can name a Python parameter and a Pydantic field (not a keyword, not `model_*`).
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and not n.startswith("model_")
)
PATTERNS = st.sampled_from(
    [r"^[A-Z]{2}$", r"^ORD-\d+$", r"[a-z]+", r"^(a|b)+$", "(", r"^\d{3}-\d{4}$", "x{2,1}"]
)


def _schema_leaves() -> st.SearchStrategy[dict[str, Any]]:
    string = st.fixed_dictionaries(
        {"type": st.just("string")},
        optional={
            "minLength": st.integers(-1, 4),
            "maxLength": st.integers(0, 30),
            "pattern": PATTERNS,
            "format": st.sampled_from(["date", "time", "date-time", "email", "bogus"]),
            "description": TRICKY,
        },
    )
    integer = st.fixed_dictionaries(
        {"type": st.just("integer")},
        optional={
            "minimum": st.integers(-5, 5),
            "maximum": st.integers(-5, 50),
            "exclusiveMinimum": st.integers(-5, 5),
            "multipleOf": st.integers(1, 3),
        },
    )
    number = st.fixed_dictionaries(
        {"type": st.just("number")}, optional={"minimum": st.floats(-5, 5), "maximum": st.floats(-5, 50)}
    )
    enum_values = st.lists(
        st.one_of(TRICKY, st.integers(-3, 3), st.booleans(), st.none()), min_size=0, max_size=4
    )
    return st.one_of(
        string,
        integer,
        number,
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.builds(lambda v: {"enum": v}, enum_values),
        st.builds(lambda v: {"const": v}, JSON_VALUES),
        st.builds(lambda t: {"type": t}, st.sampled_from(["strin", "object", ["string", "null"], 5])),
        JSON_VALUES.map(lambda v: v if isinstance(v, dict) else {"junk": v}),
    )


def _schema_nodes(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    properties = st.dictionaries(NAMES, inner, max_size=3)
    obj = st.builds(
        lambda props, required, extra: {
            "type": "object",
            "properties": props,
            "required": [n for n in props if n in required] + (["ghost"] if "ghost" in required else []),
            **extra,
        },
        properties,
        st.lists(st.one_of(NAMES, st.just("ghost")), max_size=3),
        st.sampled_from([{}, {"additionalProperties": False}, {"additionalProperties": True}]),
    )
    array = st.builds(
        lambda items, extra: {"type": "array", "items": items, **extra},
        inner,
        st.fixed_dictionaries({}, optional={"minItems": st.integers(0, 3), "maxItems": st.integers(0, 5)}),
    )
    combined = st.builds(
        lambda key, branches: {key: branches},
        st.sampled_from(["anyOf", "oneOf", "allOf"]),
        st.lists(inner, min_size=1, max_size=3),
    )
    reference = st.builds(
        lambda target: {"$ref": "#/$defs/thing", "$defs": {"thing": target}}, inner
    ) | st.just({"$ref": "#/$defs/missing"})
    return st.one_of(obj, array, combined, reference)


SCHEMAS = st.recursive(_schema_leaves(), _schema_nodes, max_leaves=6)


@st.composite
def openai_tools(draw: Any) -> Any:
    tools = []
    for _ in range(draw(st.integers(1, 3))):
        parameters = draw(
            st.one_of(
                st.builds(
                    lambda props, required: {"type": "object", "properties": props, "required": required},
                    st.dictionaries(NAMES, SCHEMAS, max_size=3),
                    st.lists(NAMES, max_size=2),
                ),
                SCHEMAS,
            )
        )
        function: dict[str, Any] = {"name": draw(st.one_of(NAMES, TRICKY)), "parameters": parameters}
        if draw(st.booleans()):
            function["description"] = draw(TRICKY)
        tools.append(draw(st.sampled_from([{"type": "function", "function": function}, function])))
    return draw(st.sampled_from([tools, {"tools": tools}, tools[0], json.loads(json.dumps(tools))]))


class Colour(enum.Enum):
    red = "red"
    green = "green"


FIELD_TYPES: list[Any] = [
    str,
    int,
    float,
    bool,
    dt.date,
    Colour,
    Literal["a", "b"],
    list[str],
    Optional[int],  # noqa: UP045 (both spellings reach Pydantic the same way; this one too)
    int | None,
    Annotated[int, Field(ge=0, le=9)],
    Annotated[str, Field(max_length=5)],
    Annotated[str, Field(pattern=r"^[A-Z]{2}$")],
    list[Annotated[int, Field(ge=1)]],
]


@st.composite
def pydantic_or_function_tools(draw: Any) -> list[Any]:
    tools: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=True))
        fields = {n: (draw(st.sampled_from(FIELD_TYPES)), draw(st.booleans())) for n in names}
        title = draw(NAMES)
        if draw(st.booleans()):
            nested = create_model(f"{title.capitalize()}Inner", x=(int, ...))
            fields["inner"] = (nested, True)
        if draw(st.booleans()):
            spec = {n: (kind, ... if required else None) for n, (kind, required) in fields.items()}
            model = create_model(title.capitalize() or "T", __doc__=draw(TRICKY) or None, **spec)
            tools.append(model)
        else:
            tools.append(_function(title, fields, draw(TRICKY)))
    return tools


def _function(name: str, fields: dict[str, tuple[Any, bool]], doc: str) -> Any:
    def function(**kwargs: Any) -> Any:
        return kwargs

    parameters = [
        inspect.Parameter(
            n,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=kind,
            default=inspect.Parameter.empty if req else None,
        )
        for n, (kind, req) in fields.items()
    ]
    function.__name__ = name
    function.__doc__ = doc
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {n: kind for n, (kind, _) in fields.items()}
    return function


def _check_catalogue(base_vocab: Any, data: Any) -> None:
    source = data.draw(st.one_of(openai_tools(), pydantic_or_function_tools()), label="tools")
    note(repr([inspect.signature(tool) for tool in source]) if _python(source) else json.dumps(source))
    python = _python(source)
    try:
        catalogue = Catalogue.from_tools(source) if python else Catalogue.from_openai(source)
        gbnf = catalogue_gbnf(catalogue, OPTIONS)
    except CatalogueError as exc:  # the one documented refusal, with a message that says what
        assert str(exc).strip()
        event("refused")
        return
    event("grammar")
    check_grammar_loads(base_vocab, gbnf)  # what the grammar module accepts, llama.cpp accepts
    # A correct result: a schema-valid call is accepted by the grammar and parses back, canonical.
    tool = data.draw(st.sampled_from(catalogue.names), label="tool")
    arguments = data.draw(values(catalogue.get(tool).parameters, OPTIONS), label="arguments")
    text = serialize_call(catalogue, tool, arguments)
    parsed = catalogue.parse(text)
    assert isinstance(parsed, ToolCall) and parsed.canonical == text
    # (llama.cpp's tokenizer maps a few unassigned code points, U+40000 say, to other bytes: such a
    # text cannot be fed token by token, though the grammar itself admits it.)
    tokens = base_vocab.tokenize(text.encode(), add_bos=False, special=False)
    assert base_vocab.detokenize(tokens) != text.encode() or accepts(base_vocab, gbnf, text)
    assert accepts(base_vocab, gbnf, serialize_no_tool("x"))


@FAST
@given(data=st.data())
def test_catalogues_are_refused_clearly_or_give_a_working_grammar(base_vocab, data):
    _check_catalogue(base_vocab, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_catalogues_are_refused_clearly_or_give_a_working_grammar_slow(base_vocab, data):
    _check_catalogue(base_vocab, data)


# -- 3. parse_tool_call on arbitrary text ------------------------------------------------------------

CATALOGUES = all_catalogues()


@st.composite
def model_outputs(draw: Any) -> Any:
    catalogue = CATALOGUES[draw(st.sampled_from(sorted(CATALOGUES)))]
    tool = draw(st.sampled_from(catalogue.names))
    canonical = serialize_call(catalogue, tool, draw(values(catalogue.get(tool).parameters, OPTIONS)))
    at = draw(st.integers(0, len(canonical)))
    kind = draw(st.sampled_from(["canonical", "reformatted", "spliced", "cut", "random", "deep", "not text"]))
    if kind == "canonical":
        return canonical
    if kind == "reformatted":  # whitespace and key order are forgiven: still the same call
        data = json.loads(canonical)
        return json.dumps(dict(reversed(data.items())), indent=draw(st.sampled_from([None, 1, "\t"])))
    if kind == "spliced":
        return canonical[:at] + draw(TRICKY) + canonical[at:]
    if kind == "cut":
        return canonical[:at]
    if kind == "random":
        return draw(st.one_of(TRICKY, st.text(), st.binary(max_size=40), JSON_VALUES.map(json.dumps)))
    if kind == "deep":
        return draw(st.sampled_from(["[" * 5000 + "]" * 5000, '{"tool":' * 3000, '{"a":' * 100000]))
    return draw(JSON_VALUES)


def _check_parse(data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(CATALOGUES)), label="catalogue")
    catalogue = CATALOGUES[name]
    text = data.draw(model_outputs(), label="text")
    parsed = parse_tool_call(text, catalogue)
    event(type(parsed).__name__)
    if parsed is None:
        return
    if isinstance(parsed, NoTool):
        assert isinstance(parsed.reason, str)
        assert parse_tool_call(parsed.canonical, catalogue) == parsed
        return
    assert isinstance(parsed, ToolCall) and parsed.tool in catalogue.names
    again = make_call(catalogue, parsed.tool, parsed.arguments)  # validates: the schema holds
    assert (
        again.canonical == parsed.canonical
        and catalogue.parse(parsed.canonical).canonical == parsed.canonical
    )


@FAST
@given(data=st.data())
def test_parse_tool_call_never_raises_and_only_returns_valid_calls(data):
    _check_parse(data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_parse_tool_call_never_raises_and_only_returns_valid_calls_slow(data):
    _check_parse(data)


def _python(source: Any) -> bool:
    return isinstance(source, list) and not isinstance(source[0], dict)
