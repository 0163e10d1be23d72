"""`tool_choice` through the grammar, from `catalogue_gbnf` to the official client over real HTTP.

"none" leaves only no_tool, "required" takes no_tool out, a named function leaves that tool only;
each is checked in llama.cpp's grammar engine, on the router (the tiny random model, whose choices
are a random walk: only the grammar can make them obey) and over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import runtime_support
from serve_support import base_url, post_json, serving

from support import accepts
from toolroute.grammars import NO_TOOL, ToolCall, catalogue_gbnf, load_catalogue, serialize_no_tool
from toolroute.runtime.router import Router

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
from toolroute.runtime.server import RouterServer  # noqa: E402

CATALOGUE = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
OPTIONS = runtime_support.TEST_OPTIONS
CALL = '{"tool":"escalate","arguments":{"topic":"legal","urgency":"normal"}}'
NO_TOOL_TEXT = serialize_no_tool("chat")
TEXTS = ["where is my order ORD-1234?", "hello there", "refund ORD-9 please", "I need a human", "?!"]


def test_grammar_without_no_tool_or_without_calls(base_vocab):
    assert isinstance(CATALOGUE.parse(CALL), ToolCall)
    full = catalogue_gbnf(CATALOGUE, OPTIONS)
    required = catalogue_gbnf(CATALOGUE, OPTIONS, no_tool=False)
    none = catalogue_gbnf(CATALOGUE, OPTIONS, calls=False)
    assert accepts(base_vocab, full, CALL) and accepts(base_vocab, full, NO_TOOL_TEXT)
    assert accepts(base_vocab, required, CALL) and not accepts(base_vocab, required, NO_TOOL_TEXT)
    assert not accepts(base_vocab, none, CALL) and accepts(base_vocab, none, NO_TOOL_TEXT)
    assert full == catalogue_gbnf(CATALOGUE, OPTIONS, calls=True, no_tool=True)  # the default is unchanged
    with pytest.raises(ValueError, match="accepts nothing"):
        catalogue_gbnf(CATALOGUE, OPTIONS, calls=False, no_tool=False)


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[Router]:
    with Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as loaded:
        yield loaded


def test_router_no_tool_false_always_calls_and_empty_tools_never_call(router):
    for text in TEXTS:
        required = router.route(text, no_tool=False)
        assert required.kind in ("call", "low_confidence") and required.call is not None
        assert NO_TOOL not in required.probabilities
        assert abs(sum(required.probabilities.values()) - 1.0) < 1e-6
        none = router.route(text, tools=[])
        assert none.kind == "no_tool" and none.probabilities == {NO_TOOL: 1.0}
        named = router.route(text, tools=["escalate"], no_tool=False)
        assert named.call is not None and named.call.tool == "escalate" and named.confidence == 1.0


@pytest.fixture(scope="module")
def server(router) -> Iterator[RouterServer]:
    with serving(router) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=base_url(server), api_key="x", max_retries=0, timeout=30)


def create(client, text: str, **request):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **request)


def test_tool_choice_over_http(client):
    for text in TEXTS:
        none = create(client, text, tool_choice="none")
        assert none.choices[0].finish_reason == "stop" and not none.choices[0].message.tool_calls
        assert none.model_extra["toolroute"]["kind"] == "no_tool" and none.choices[0].message.content

        required = create(client, text, tool_choice="required", parallel_tool_calls=True)
        (call,) = required.choices[0].message.tool_calls
        assert required.choices[0].finish_reason == "tool_calls" and call.function.name in CATALOGUE.names

        for name in CATALOGUE.names:
            named = create(client, text, tool_choice={"type": "function", "function": {"name": name}})
            (call,) = named.choices[0].message.tool_calls
            assert call.function.name == name
            text_call = f'{{"tool":"{name}","arguments":{call.function.arguments}}}'
            assert isinstance(CATALOGUE.parse(text_call), ToolCall)

        allowed = {"mode": "required", "tools": [{"type": "function", "function": {"name": "track_order"}}]}
        narrowed = create(client, text, tool_choice={"type": "allowed_tools", "allowed_tools": allowed})
        assert narrowed.choices[0].message.tool_calls[0].function.name == "track_order"


def test_required_with_a_tools_subset(client):
    tools = [t for t in CATALOGUE.to_openai() if t["function"]["name"] in ("track_order", "escalate")]
    for text in TEXTS:
        completion = create(client, text, tools=tools, tool_choice="required", parallel_tool_calls=False)
        assert completion.choices[0].message.tool_calls[0].function.name in ("track_order", "escalate")


@pytest.mark.parametrize(
    ("request_fields", "code", "named"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "delete_all"}}},
            "unknown_tool",
            "delete_all",
        ),
        (
            {
                "tool_choice": {"type": "function", "function": {"name": "escalate"}},
                "tools": [t for t in CATALOGUE.to_openai() if t["function"]["name"] == "track_order"],
            },
            "unknown_tool",
            "escalate",
        ),
        ({"tool_choice": "always"}, "invalid_tool_choice", "always"),
        ({"tool_choice": 5}, "invalid_tool_choice", "5"),
        ({"tool_choice": {"type": "function"}}, "invalid_tool_choice", "function"),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "x"}}},
            "invalid_tool_choice",
            "mode",
        ),
        ({"parallel_tool_calls": {"a": 1}}, "invalid_request", "parallel_tool_calls"),
    ],
)
def test_bad_tool_choice_is_a_400_naming_it(server, request_fields, code, named):
    status, _, body = post_json(server, {"messages": [{"role": "user", "content": "hi"}], **request_fields})
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == code and named in error["message"]
    assert error["param"] == ("parallel_tool_calls" if "parallel" in named else "tool_choice")


def test_required_returns_a_call_below_the_threshold_and_says_so(tmp_path_factory):
    """Documented: with "auto" a call below the confidence threshold is held back (content, "stop");
    with "required" (or a named tool) the client ruled out "no call", so the call is returned,
    flagged `toolroute.kind: "low_confidence"` with its confidence."""
    path = runtime_support.tiny_router_file(tmp_path_factory)
    with Router.load(path, n_threads=1, min_confidence=0.999) as strict, serving(strict) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="x", max_retries=0, timeout=30)
        seen_low = 0
        for text in TEXTS:
            auto = create(client, text)
            required = create(client, text, tool_choice="required")
            extra = required.model_extra["toolroute"]
            assert required.choices[0].finish_reason == "tool_calls"
            if extra["kind"] == "low_confidence":
                seen_low += 1
                assert extra["confidence"] < 0.999 and required.choices[0].message.tool_calls
                if auto.model_extra["toolroute"]["kind"] == "low_confidence":
                    assert auto.choices[0].finish_reason == "stop" and not auto.choices[0].message.tool_calls
            else:
                assert extra["kind"] == "call" and extra["confidence"] >= 0.999
        assert seen_low, "the random model was sure of every call: the case was not exercised"
