"""The JSONL reader every training-data consumer uses: split on "\\n" only, every bad line an error.

Regressions of issue 11 item 6: a 5,000-digit integer or deep nesting aborted `data check` with a
traceback, and `str.splitlines` cut rows holding U+2028 / U+2029 / U+0085 (which
`json.dumps(..., ensure_ascii=False)` leaves raw) in two, shifting every later line number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import CUSTOMER_SUPPORT_TOOLS
from toolroute.grammars import load_catalogue
from toolroute.train.check import check_data, format_report
from toolroute.train.formats import read_examples
from toolroute.train.hwu64 import read_hwu64
from toolroute.train.jsonl import read_jsonl

SUPPORT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
SEPARATORS = "\u2028\u2029\u0085"


def _row(request: str, order: str = "ORD-1") -> str:
    arguments = json.dumps({"order_id": order})
    row = {
        "messages": [
            {"role": "user", "content": request},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "track_order", "arguments": arguments},
                    }
                ],
            },
        ]
    }
    return json.dumps(row, ensure_ascii=False)  # as the project's own writers write rows


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_line_separators_inside_strings_do_not_split_rows(tmp_path):
    data = _write(
        tmp_path / "data.jsonl",
        [
            _row(f"where is{SEPARATORS}my order"),
            _row("where is it?"),
            "{not json",
            _row(f"and{SEPARATORS[0]}this one"),
        ],
    )
    result = read_examples(data, SUPPORT)
    assert [str(error) for error in result.errors] == [
        f"{data}:3: bad JSON: Expecting property name enclosed in double quotes at column 2"
    ]
    assert [e.request for e in result.examples] == [
        f"where is{SEPARATORS}my order",
        "where is it?",
        f"and{SEPARATORS[0]}this one",
    ]
    assert [e.source for e in result.examples] == [f"{data}:1", f"{data}:2", f"{data}:4"]
    assert result.lines[f"{data}:1"] == _row(f"where is{SEPARATORS}my order")  # `data split` writes this


def test_every_bad_line_is_an_error_and_reading_goes_on(tmp_path):
    huge = "9" * 5000
    deep = "[" * 100_000 + "]" * 100_000
    nested_arguments = _row("x").replace('{\\"order_id\\": \\"ORD-1\\"}', "[" * 5000 + "]" * 5000)
    huge_arguments = _row("x").replace('\\"ORD-1\\"', huge)
    system_not_text = json.dumps(
        {"messages": [{"role": "system", "content": 7}, *json.loads(_row("x"))["messages"]]}
    )
    lines: list[str | bytes] = [
        _row("first"),
        '{"messages": ' + huge + "}",
        deep,
        "[" * 65 + "]" * 65,  # parses, but deeper than any row needs
        b'{"messages": "\xff\xfe"}',
        nested_arguments,
        huge_arguments,
        system_not_text,
        "42",
        _row("last", "ORD-2"),
    ]
    data = _write(tmp_path / "data.jsonl", lines)
    result = read_examples(data, SUPPORT)
    errors = {error.line: error.message for error in result.errors}
    assert errors[2].startswith("bad JSON: a number too long to read")
    assert errors[3] == errors[4] == "bad JSON: nested more than 64 levels deep"
    assert errors[5] == "not UTF-8 (invalid start byte at byte 14)"
    assert errors[6].startswith(
        "messages[1].tool_calls[0].function.arguments is not valid JSON text: nested more"
    )
    assert errors[7].startswith(
        "messages[1].tool_calls[0].function.arguments is not valid JSON text: a number"
    )
    assert errors[8] == "messages[0].content: a system message's content must be a string"
    assert errors[9] == "expected a JSON object, got int"
    assert sorted(errors) == list(range(2, 10))
    assert [e.request for e in result.examples] == ["first", "last"]
    report = check_data(data, SUPPORT)  # the whole check runs to its report: no traceback
    assert f"{data}:5: not UTF-8" in format_report(report)
    assert len(report.errors) == 9  # 8 bad lines + fewer than 10 valid examples


def test_a_tool_schema_of_the_wrong_type_is_a_row_error(tmp_path):
    """A row's own `tools` go through the catalogue normaliser: `"type": {}` was a TypeError."""
    tools = SUPPORT.to_openai()
    tools[0]["function"]["parameters"]["properties"]["order_id"]["type"] = {}
    row = json.loads(_row("where is ORD-1"))
    data = _write(tmp_path / "data.jsonl", [json.dumps({**row, "tools": tools}), _row("next")])
    result = read_examples(data, SUPPORT)
    assert [error.line for error in result.errors] == [1]
    assert "unsupported type {}" in result.errors[0].message
    assert len(result.examples) == 1


def test_crlf_line_endings_and_a_byte_order_mark_are_read(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + _row("one").encode() + b"\r\n" + _row("two").encode() + b"\r\n\r\n")
    result = read_examples(data, SUPPORT)
    assert not result.errors and [e.request for e in result.examples] == ["one", "two"]
    assert result.lines[f"{data}:2"] == _row("two")


def test_the_reader_streams_line_by_line(tmp_path):
    data = _write(tmp_path / "data.jsonl", ["1", "", "  ", "[2]"])
    lines = read_jsonl(data)
    first = next(lines)  # a generator: nothing past the first line has been read yet
    assert (first.number, first.value) == (1, 1)
    assert [(line.number, line.value) for line in lines] == [(4, [2])]


def test_a_missing_file_is_one_error(tmp_path):
    result = read_examples(tmp_path / "missing.jsonl", SUPPORT)
    assert [error.line for error in result.errors] == [0]
    assert "cannot read the file" in result.errors[0].message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": ' + "1" * 5000 + "}", ":2: bad JSON: a number too long to read"),
        ("[" * 100_000, ":2: bad JSON: nested more than 64 levels deep"),
    ],
)
def test_hwu64_reads_through_the_same_reader(tmp_path, line, message):
    good = '{"text": "wake me\u2028at six", "intent": "alarm_set", "fold": 9, "entities": []}'
    source = tmp_path / "hwu64.jsonl"
    source.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_hwu64(source)
    assert str(info.value).startswith(f"{source}{message}")
    source.write_text(good + "\n", encoding="utf-8")
    assert read_hwu64(source)[0].text == "wake me\u2028at six"
