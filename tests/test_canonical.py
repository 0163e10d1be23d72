"""Canonical serialisation and `parse_tool_call`."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import CUSTOMER_SUPPORT_TOOLS, KITCHEN_SINK_TOOLS
from toolroute.grammars import (
    NoTool,
    ToolCall,
    format_number,
    load_catalogue,
    parse_tool_call,
    serialize_call,
    serialize_no_tool,
)

SUPPORT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
SINK = load_catalogue(KITCHEN_SINK_TOOLS)


def test_the_lessons_examples():
    assert serialize_call(SUPPORT, "track_order", {"order_id": "ORD-1234"}) == (
        '{"tool":"track_order","arguments":{"order_id":"ORD-1234"}}'
    )
    assert serialize_no_tool("greeting") == '{"tool":"no_tool","reason":"greeting"}'


def test_keys_follow_schema_order_and_absent_optionals_are_omitted():
    text = serialize_call(SUPPORT, "escalate", {"order_id": "A1", "urgency": "high", "topic": "legal"})
    assert text == '{"tool":"escalate","arguments":{"topic":"legal","urgency":"high","order_id":"A1"}}'
    text = serialize_call(SUPPORT, "request_refund", {"reason": None, "order_id": "A"})
    assert text == '{"tool":"request_refund","arguments":{"order_id":"A"}}'


def test_strings_escape_like_json_dumps():
    text = serialize_call(SUPPORT, "track_order", {"order_id": 'a"b\\c\n\x01é/😀'})
    assert text == '{"tool":"track_order","arguments":{"order_id":"a\\"b\\\\c\\n\\u0001é/😀"}}'
    assert json.loads(text)["arguments"]["order_id"] == 'a"b\\c\n\x01é/😀'


@pytest.mark.parametrize(
    "value, integer, text",
    [
        (3, False, "3"),
        (3.0, False, "3.0"),
        (3.0, True, "3"),
        (-0.0, False, "0.0"),
        (0.1, False, "0.1"),
        (1e-05, False, "0.00001"),
        (1e16, False, "10000000000000000.0"),
        (-2.5, False, "-2.5"),
        (123456789.125, False, "123456789.125"),
    ],
)
def test_number_spelling(value, integer, text):
    assert format_number(value, integer) == text


@pytest.mark.parametrize("bad", [True, float("nan"), float("inf"), "3"])
def test_non_numbers_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        format_number(bad)


def test_nested_objects_and_unions_use_the_matching_branch_order():
    text = serialize_call(
        SINK,
        "send_message",
        {
            "reply_to": 7,
            "body": "hi",
            "to": ["a"],
            "attachment": {"meta": {"private": True, "mime": "text/plain"}, "name": "x"},
        },
    )
    assert text == (
        '{"tool":"send_message","arguments":{"to":["a"],"body":"hi","reply_to":7,'
        '"attachment":{"name":"x","meta":{"mime":"text/plain","private":true}}}}'
    )


def test_parse_returns_typed_calls_and_no_tool():
    call = parse_tool_call('{"arguments": {"order_id": "ORD-1"}, "tool": "track_order"}', SUPPORT)
    assert isinstance(call, ToolCall)
    assert call.tool == "track_order"
    assert call.args.order_id == "ORD-1"
    assert call.canonical == '{"tool":"track_order","arguments":{"order_id":"ORD-1"}}'
    refusal = parse_tool_call('{"tool":"no_tool","reason":"greeting"}', SUPPORT)
    assert refusal == NoTool(reason="greeting")
    assert refusal.canonical == '{"tool":"no_tool","reason":"greeting"}'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"tool":1}',
        '{"tool":"track_order"}',
        '{"tool":"track_order","arguments":[]}',
        '{"tool":"track_order","arguments":{"order_id":5}}',  # wrong type
        '{"tool":"track_order","arguments":{"order_id":"A","x":1}}',  # unknown argument
        '{"tool":"track_order","arguments":{"order_id":"A"},"extra":1}',
        '{"tool":"unknown","arguments":{}}',
        '{"tool":"no_tool"}',
        '{"tool":"no_tool","reason":3}',
        '{"tool":"request_refund","arguments":{"order_id":"A","reason":"bored"}}',
        '{"tool":"escalate","arguments":{"topic":"legal","urgency":null}}',
        '{"tool":"track_order","arguments":{"order_id":"A"}} trailing',
        '{"tool":"book_table","arguments":{"restaurant":"R","date":"2023-02-30","party_size":2}}',
        '{"tool":"book_table","arguments":{"restaurant":"R","date":"2023-02-01","party_size":21}}',
        '{"tool":"book_table","arguments":{"restaurant":"R","date":"2023-02-01","party_size":true}}',
        '{"tool":"book_table","arguments":{"restaurant":"R","date":"2023-02-01","party_size":"2"}}',
        '{"tool":"send_message","arguments":{"to":["a"],"body":"b","reply_to":null,"priority":true}}',
        '{"tool":"send_message","arguments":{"to":["a"],"body":"b","reply_to":null,"priority":1.0}}',
        '{"tool":"set_thermostat","arguments":{"room":"kitchen-1"}}',  # pattern
        '{"tool":"set_thermostat","arguments":{"room":"bedroom-1","delta":3}}',  # exclusive bound
    ],
)
def test_parse_refuses_invalid_text(text):
    catalogue = SINK if 'tool":"book' in text or "send_" in text or "thermo" in text else SUPPORT
    assert parse_tool_call(text, catalogue) is None


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
            lambda children: (
                st.lists(children)
                | st.dictionaries(st.sampled_from(["tool", "arguments", "reason", "order_id"]), children)
            ),
        ).map(json.dumps),
        st.integers(),
    )
)
def test_parse_never_raises(text):
    parse_tool_call(text, SUPPORT)
