"""Fuzzing `toolroute serve` with request bodies over real HTTP on 127.0.0.1.

Bodies are chat requests with every field drawn from valid and hostile values (roles, content
parts, earlier tool calls, `tools`, `tool_choice`, `stream`, `n`...), their JSON text cut or
spliced, other JSON values and raw bytes. Every one must get a status (never a 5xx) and either an
OpenAI-shaped error or a completion whose call is in the catalogue and within what the request
allowed; the server answers /healthz after each. The `_slow` twin runs many more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import runtime_support
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from serve_support import get_status, post_raw, serving, sse_data

from support import values
from toolroute.grammars import GrammarOptions, ToolCall, load_catalogue
from toolroute.runtime.router import Router

pytest.importorskip("uvicorn")
from toolroute.runtime.server import RouterServer

CATALOGUE = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
TOOLS_JSON = CATALOGUE.to_openai()
MAX_BODY = 16 * 1024
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\u2028", '"', "{", "}", "<|im_start|>", "<|im_end|>", "</s>", "\\u0000"]),
    ),
    max_size=16,
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
NAMES = st.sampled_from([*CATALOGUE.names, "delete_all", "no_tool", ""])


@st.composite
def earlier_calls(draw: Any) -> list[dict[str, Any]]:
    name = draw(NAMES)
    if name in CATALOGUE.names and draw(st.booleans()):
        arguments = json.dumps(
            draw(values(CATALOGUE.get(name).parameters, GrammarOptions(max_string_length=8)))
        )
    else:
        arguments = draw(st.one_of(TEXT, JSON_VALUES.map(json.dumps), st.just("[" * 200 + "]" * 200)))
    return [{"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]


CONTENT = st.one_of(
    TEXT,
    st.sampled_from(["where is ORD-1234?", "refund ORD-9", "call delete_all now", "   "]),
    st.none(),
    st.lists(
        st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, TEXT),
            st.just({"type": "image_url", "image_url": {"url": "http://x"}}),
            JSON_VALUES,
        ),
        max_size=2,
    ),
    JSON_VALUES,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(
            ["system", "developer", "user", "assistant", "tool", "function", "wizard", None]
        )
    },
    optional={"content": CONTENT, "tool_calls": earlier_calls(), "tool_call_id": TEXT, "name": TEXT},
)
TOOLS = st.one_of(
    st.lists(st.sampled_from(TOOLS_JSON), min_size=1, max_size=3, unique_by=lambda t: t["function"]["name"]),
    st.just([]),
    st.lists(JSON_VALUES, max_size=2),
    st.builds(
        lambda tool, schema: [{**tool, "function": {**tool["function"], "parameters": schema}}],
        st.sampled_from(TOOLS_JSON),
        JSON_VALUES,
    ),
)
TOOL_CHOICE = st.one_of(
    st.sampled_from(["auto", "none", "required", "any", ""]),
    st.builds(lambda n: {"type": "function", "function": {"name": n}}, NAMES),
    st.builds(
        lambda mode, names: {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": mode,
                "tools": [{"type": "function", "function": {"name": n}} for n in names],
            },
        },
        st.sampled_from(["auto", "required", "x"]),
        st.lists(NAMES, max_size=2),
    ),
    JSON_VALUES,
)


PLAUSIBLE_HISTORY = st.lists(
    st.one_of(
        st.builds(lambda t: {"role": "user", "content": t}, TEXT),
        st.builds(lambda t: {"role": "assistant", "content": t}, TEXT),
        st.just({"role": "system", "content": "be brief"}),
        st.builds(lambda calls: {"role": "assistant", "tool_calls": calls}, earlier_calls()),
        st.builds(lambda t: {"role": "tool", "tool_call_id": "c1", "content": t}, TEXT),
    ),
    max_size=3,
)


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    """Half plausible (valid turns ending in a user request: routing itself is fuzzed), half hostile."""
    plausible = draw(st.booleans())
    messages = draw(PLAUSIBLE_HISTORY if plausible else st.lists(MESSAGE, max_size=3))
    if plausible or draw(st.booleans()):
        text = draw(
            st.one_of(st.sampled_from(["where is ORD-1234?", "refund ORD-9", "call delete_all now"]), TEXT)
        )
        messages.append({"role": "user", "content": text + draw(st.sampled_from(["", " please"]))})
    body = {"messages": messages}
    optional = {
        "model": st.one_of(TEXT, JSON_VALUES),
        "tools": TOOLS,
        "tool_choice": TOOL_CHOICE,
        "parallel_tool_calls": st.one_of(st.booleans(), JSON_VALUES),
        "stream": st.one_of(st.booleans(), JSON_VALUES),
        "stream_options": st.one_of(st.just({"include_usage": True}), JSON_VALUES),
        "n": st.one_of(st.integers(-1, 3), JSON_VALUES),
        "max_tokens": st.integers(-5, 10**6),
        "temperature": st.floats(allow_nan=False),
    }
    valid = {
        "tools": st.lists(
            st.sampled_from(TOOLS_JSON), min_size=1, max_size=3, unique_by=lambda t: t["function"]["name"]
        ),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            st.builds(
                lambda n: {"type": "function", "function": {"name": n}}, st.sampled_from(CATALOGUE.names)
            ),
        ),
        "stream": st.booleans(),
        "parallel_tool_calls": st.booleans(),
    }
    for key, strategy in (valid if plausible else optional).items():
        if draw(st.integers(0, 2)) == 0:
            body[key] = draw(strategy)
    if body.get("stream") is True and draw(st.booleans()):
        body["stream_options"] = {"include_usage": True}
    return body


@st.composite
def bodies(draw: Any) -> tuple[bytes, Any]:
    """(the bytes sent, the request they were made from, if any)."""
    kind = draw(st.sampled_from(["request"] * 6 + ["cut", "spliced", "json", "bytes"]))
    if kind in ("json", "bytes"):
        raw = json.dumps(draw(JSON_VALUES)).encode() if kind == "json" else draw(st.binary(max_size=300))
        return raw, None
    request = draw(requests())
    text = json.dumps(request, ensure_ascii=draw(st.booleans())).encode()
    if kind == "cut":
        return text[: draw(st.integers(0, len(text)))], None
    if kind == "spliced":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:], None
    return text, request


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RouterServer]:
    with (
        Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as router,
        serving(router, max_body_bytes=MAX_BODY) as running,
    ):
        yield running


def allowed_tools(request: Any) -> set[str]:
    """The tools a request left the router (a superset: what the server may answer with at most)."""
    allowed = set(CATALOGUE.names)
    if not isinstance(request, dict):
        return allowed
    tools = request.get("tools")
    if isinstance(tools, list) and all(isinstance(t, dict) for t in tools):
        allowed &= {t.get("function", {}).get("name") for t in tools if isinstance(t.get("function"), dict)}
    choice = request.get("tool_choice")
    if choice == "none":
        return set()
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        allowed &= {choice["function"].get("name")}
    return allowed


def check_call(call: dict[str, Any], allowed: set[str]) -> None:
    function = call["function"]
    text = f'{{"tool":{json.dumps(function["name"])},"arguments":{function["arguments"]}}}'
    parsed = CATALOGUE.parse(text)
    assert isinstance(parsed, ToolCall) and parsed.canonical == text and parsed.tool in allowed


def check_exchange(server: RouterServer, raw: bytes, request: Any) -> None:
    status, headers, body = post_raw(server, raw, timeout_s=30)
    event(str(status))
    assert status < 500, body[:500]
    if status != 200:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        assert error["type"] == "invalid_request_error"
        event(f"{status} {error['code']} {error['param']}")
        return
    allowed = allowed_tools(request)
    if headers["content-type"].startswith("text/event-stream"):
        payloads = sse_data(body)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        calls = [c for chunk in chunks for ch in chunk["choices"] for c in ch["delta"].get("tool_calls", [])]
        finish = [ch["finish_reason"] for chunk in chunks for ch in chunk["choices"] if ch["finish_reason"]]
        assert (
            len(calls) <= 1
            and finish in (["stop"], ["tool_calls"])
            and (finish == ["tool_calls"]) == bool(calls)
        )
    else:
        completion = json.loads(body)
        (choice,) = completion["choices"]
        calls = choice["message"].get("tool_calls") or []
        assert (choice["finish_reason"] == "tool_calls") == bool(calls) and len(calls) <= 1
        assert calls or isinstance(choice["message"]["content"], str)
    for call in calls:
        check_call(call, allowed)


@FAST
@given(case=bodies())
def test_every_body_gets_a_status_and_the_server_stays_up(server, case, caplog):
    caplog.set_level(logging.ERROR)
    check_exchange(server, *case)
    assert get_status(server) == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.slow
@SLOW
@given(case=bodies())
def test_every_body_gets_a_status_and_the_server_stays_up_slow(server, case, caplog):
    caplog.set_level(logging.ERROR)
    check_exchange(server, *case)
    assert get_status(server) == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
