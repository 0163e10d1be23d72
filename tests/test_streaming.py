"""`"stream": true` over real HTTP on 127.0.0.1: OpenAI's chunk format, the official client's stream
APIs and accumulation, usage, errors before and during a stream, a client that leaves mid-stream.

The tiny random router answers in milliseconds; `tool_choice` makes it call ("required") or not
("none"), so both shapes of a stream are exercised whatever the random weights prefer.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import runtime_support
from serve_support import base_url, get_status, post_json, serving, sse_data, wait_until

from toolroute.grammars import ToolCall, load_catalogue
from toolroute.runtime.router import Router

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
from toolroute.runtime.server import RouterServer  # noqa: E402
from toolroute.runtime.service import Reply  # noqa: E402

CATALOGUE = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
MESSAGES = [{"role": "user", "content": "where is my order ORD-1234?"}]


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[Router]:
    with Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def server(router) -> Iterator[RouterServer]:
    with serving(router) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=base_url(server), api_key="x", max_retries=0, timeout=30)


def stream_payloads(server: RouterServer, **request: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    status, headers, body = post_json(server, {"messages": MESSAGES, "stream": True, **request})
    assert status == 200, body
    payloads = sse_data(body)
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]], headers


def completion(server: RouterServer, **request: Any) -> dict[str, Any]:
    status, _, body = post_json(server, {"messages": MESSAGES, **request})
    assert status == 200, body
    return json.loads(body)


def check_common(chunks: list[dict[str, Any]]) -> None:
    first = chunks[0]
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion.chunk"
    for chunk in chunks:
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            first["id"],
            first["created"],
            first["model"],
        )
        assert chunk["object"] == "chat.completion.chunk"


def test_a_call_streams_as_role_then_tool_call_then_finish(server):
    chunks, headers = stream_payloads(server, tool_choice="required")
    assert headers["content-type"].startswith("text/event-stream") and headers["cache-control"] == "no-cache"
    check_common(chunks)
    assert len(chunks) == 3 and all("usage" not in c for c in chunks)
    role, call, finish = (c["choices"] for c in chunks)
    assert role == [{"index": 0, "delta": {"role": "assistant", "content": None}, "logprobs": None,
                     "finish_reason": None}]  # fmt: skip
    (delta_call,) = call[0]["delta"]["tool_calls"]
    assert (
        delta_call["index"] == 0 and delta_call["type"] == "function" and delta_call["id"].startswith("call_")
    )
    assert call[0]["finish_reason"] is None
    assert finish == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]
    # The same call, byte for byte, as the non-streamed answer (routing is deterministic).
    whole = completion(server, tool_choice="required")
    (expected,) = whole["choices"][0]["message"]["tool_calls"]
    assert delta_call["function"] == expected["function"]
    function = delta_call["function"]
    text = f'{{"tool":"{function["name"]}","arguments":{function["arguments"]}}}'
    assert isinstance(CATALOGUE.parse(text), ToolCall) and text == chunks[-1]["toolroute"]["raw"]


def test_no_tool_streams_its_reason_as_content(server):
    chunks, _ = stream_payloads(server, tool_choice="none")
    check_common(chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    content = "".join(d.get("content") or "" for d in deltas)
    assert all("tool_calls" not in d for d in deltas)
    assert (
        chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["toolroute"]["kind"] == "no_tool"
    )
    assert content == completion(server, tool_choice="none")["choices"][0]["message"]["content"] != ""


def test_include_usage_adds_a_final_usage_chunk(server):
    chunks, _ = stream_payloads(server, tool_choice="required", stream_options={"include_usage": True})
    *rest, usage = chunks
    assert usage["choices"] == [] and all(c["usage"] is None for c in rest)
    expected = completion(server, tool_choice="required")["usage"]
    assert usage["usage"] == expected and expected["total_tokens"] > 0
    chunks, _ = stream_payloads(server, stream_options={"include_usage": False})
    assert all("usage" not in c for c in chunks)


def test_openai_client_create_stream_and_accumulate(client, server):
    stream = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        tool_choice="required",
        stream_options={"include_usage": True},
    )
    # The accumulation OpenAI documents for `create(stream=True)`: by index, concatenating arguments.
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    whole = client.chat.completions.create(model="m", messages=MESSAGES, tool_choice="required")
    (expected,) = whole.choices[0].message.tool_calls
    assert finish == "tool_calls" and list(calls) == [0]
    assert (calls[0]["name"], calls[0]["arguments"]) == (expected.function.name, expected.function.arguments)
    assert calls[0]["id"].startswith("call_") and usage.total_tokens == whole.usage.total_tokens


def test_openai_client_stream_helper_events_and_final_completion(client):
    tools = CATALOGUE.to_openai()
    with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "escalate"}},
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls" and call.function.name == "escalate"
    assert len(done) == 1 and done[0].name == "escalate" and done[0].arguments == call.function.arguments
    assert isinstance(
        CATALOGUE.parse(f'{{"tool":"escalate","arguments":{call.function.arguments}}}'), ToolCall
    )

    with client.chat.completions.stream(model="m", messages=MESSAGES, tool_choice="none") as stream:
        events = list(stream)
        final = stream.get_final_completion()
    (content_done,) = [e for e in events if e.type == "content.done"]
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert content_done.content == final.choices[0].message.content != ""


def test_errors_before_a_stream_are_plain_statuses(router, server):
    status, headers, body = post_json(
        server,
        {
            "messages": MESSAGES,
            "stream": True,
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
    )
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["param"] == "tool_choice"
    with serving(router, max_queue=0) as strict, router.contexts.acquire():
        status, headers, body = post_json(strict, {"messages": MESSAGES, "stream": True})
    assert (
        status == 503 and headers["retry-after"] == "1" and json.loads(body)["error"]["code"] == "overloaded"
    )


def slow_reply(server: RouterServer, monkeypatch, pieces: Iterator[str]) -> list[Reply]:
    """Make the next replies stream `pieces` as their content (a producer generating as it streams)."""
    replies: list[Reply] = []
    complete_body = server.service.complete_body

    def streamed(raw: bytes, cancelled: threading.Event | None = None) -> Reply:
        reply = complete_body(raw, cancelled)
        reply.content = pieces
        replies.append(reply)
        return reply

    monkeypatch.setattr(server.service, "complete_body", streamed)
    return replies


def test_a_client_that_leaves_mid_stream_stops_the_producer(server, monkeypatch, caplog):
    gate = threading.Event()
    produced: list[int] = []

    def pieces() -> Iterator[str]:
        yield "first "
        gate.wait(5)  # until the client has gone
        for index in range(200):
            if replies[0].cancelled.is_set():
                return
            produced.append(index)
            yield f"piece {index} "
            time.sleep(0.01)

    replies = slow_reply(server, monkeypatch, pieces())  # bound before the generator first runs
    body = json.dumps({"messages": MESSAGES, "stream": True, "tool_choice": "none"}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    caplog.set_level(logging.ERROR)
    with socket.create_connection(server.server_address, timeout=5) as sock:
        sock.sendall(head + body)
        received = b""
        while b'"first ' not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    gate.set()
    assert wait_until(lambda: replies[0].cancelled.is_set()), "the producer was never told the client left"
    assert len(produced) < 200
    monkeypatch.undo()
    assert get_status(server) == 200
    chunks, _ = stream_payloads(server, tool_choice="required")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_producer_failing_mid_stream_ends_it_with_an_error_event(client, server, monkeypatch):
    def pieces() -> Iterator[str]:
        yield "partial "
        raise RuntimeError("the answer step broke")

    slow_reply(server, monkeypatch, pieces())
    status, _, body = post_json(server, {"messages": MESSAGES, "stream": True, "tool_choice": "none"})
    payloads = sse_data(body)
    assert status == 200 and "[DONE]" not in payloads
    assert json.loads(payloads[-1])["error"]["code"] == "internal_error"

    slow_reply(server, monkeypatch, pieces())
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, tool_choice="none"
        ):
            pass
    monkeypatch.undo()
    assert get_status(server) == 200
