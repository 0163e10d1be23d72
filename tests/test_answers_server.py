"""The answer step over real HTTP: the official `openai` client's two-step loop (call -> run the
tool -> send its result -> get the answer), the legacy `function` role, and every refusal.

A tiny random router: its answers are noise (often cut at the small cap), so the tests check
statuses, shapes and that the reply is an answer, never a call.
"""

from __future__ import annotations

import json

import pytest
import runtime_support
from serve_support import post_json, serving, sse_data

from toolroute.runtime.router import Router

openai = pytest.importorskip("openai")

TOOLS = runtime_support.router_metadata().load_catalogue().to_openai()
TRACK = [t for t in TOOLS if t["function"]["name"] == "track_order"]
REQUEST = {"role": "user", "content": "where is my order ORD-1234?"}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "track_order", "arguments": '{"order_id":"ORD-1234"}'},
        }
    ],
}


def stand_in_tool(arguments: str) -> str:
    return json.dumps(
        {"order_id": json.loads(arguments).get("order_id"), "status": "in transit", "eta": "Thursday"}
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = runtime_support.tiny_router_file(tmp_path_factory, "tiny-answers.gguf", answer_rows="12")
    with (
        Router.load(path, n_threads=1, n_ctx=1024, max_answer_tokens=8) as router,
        serving(router) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    path = runtime_support.tiny_router_file(tmp_path_factory)
    with Router.load(path, n_threads=1) as router, serving(router) as running:
        yield running


def client_of(server):
    host, port = server.server_address[:2]
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0, timeout=60)


def check_answer(completion) -> str:
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and not choice.message.tool_calls
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")  # "length": the tiny model ran to the cap
    assert completion.usage.completion_tokens <= 8
    return choice.message.content


def test_two_step_loop_with_the_official_client(server):
    client = client_of(server)
    messages = [REQUEST]
    first = client.chat.completions.create(model="m", messages=messages, tools=TRACK, tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "track_order"
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": stand_in_tool(call.function.arguments)},
    ]
    second = client.chat.completions.create(model="m", messages=messages, tools=TRACK)
    text = check_answer(second)
    assert second.model_extra["toolroute"]["kind"] == "answer"
    # Streamed, the same answer arrives as content deltas.
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            assert not chunk.choices[0].delta.tool_calls
    assert "".join(pieces) == text and finish == second.choices[0].finish_reason


def test_legacy_function_role(server):
    client = client_of(server)
    messages = [
        REQUEST,
        {"role": "assistant", "content": None, "function_call": CALLED["tool_calls"][0]["function"]},
        {"role": "function", "name": "track_order", "content": "in transit, arriving Thursday"},
    ]
    check_answer(client.chat.completions.create(model="m", messages=messages))
    messages[-1] = {**messages[-1], "name": "escalate"}
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="m", messages=messages)
    assert excinfo.value.body["param"] == "messages[2].name" and "escalate" in excinfo.value.body["message"]


def test_an_empty_tool_output_is_answered(server):
    completion = client_of(server).chat.completions.create(
        model="m", messages=[REQUEST, CALLED, {"role": "tool", "tool_call_id": "call_1", "content": ""}]
    )
    check_answer(completion)


def test_unknown_tool_call_id_is_named(server):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client_of(server).chat.completions.create(
            model="m", messages=[REQUEST, CALLED, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
        )
    error = excinfo.value.body
    assert error["code"] == "unknown_tool_call_id" and error["param"] == "messages[2].tool_call_id"
    assert "call_9" in error["message"] and "call_1" in error["message"]


def test_the_answered_call_is_validated_again(server):
    bad = json.loads(json.dumps(CALLED))
    bad["tool_calls"][0]["function"] = {"name": "drop_database", "arguments": "{}"}
    status, _, body = post_json(
        server, {"messages": [REQUEST, bad, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}
    )
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "invalid_tool_call" and "drop_database" in error["message"]
    loose = {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
    status, _, body = post_json(server, {"messages": [REQUEST, loose]})
    assert status == 400 and json.loads(body)["error"]["param"] == "messages[1]"


def test_a_tool_output_larger_than_the_context_is_a_clear_400(server):
    huge = {"role": "tool", "tool_call_id": "call_1", "content": "in transit " * 2000}
    status, _, body = post_json(server, {"messages": [REQUEST, CALLED, huge]})
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert error["param"] == "messages[2].content" and "tool output too long" in error["message"]
    status, _, body = post_json(server, {"messages": [REQUEST, CALLED, huge], "stream": True})
    assert status == 400 and b"data:" not in body  # refused before a byte of a stream


def test_a_router_without_answers_refuses_never_calls_again(plain_server):
    payload = {
        "messages": [REQUEST, CALLED, {"role": "tool", "tool_call_id": "call_1", "content": "in transit"}]
    }
    status, _, body = post_json(plain_server, payload)
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "answers_not_trained"
    assert "trained without answers" in error["message"]


def test_streamed_answer_is_framed_as_sse(server):
    payload = {
        "messages": [REQUEST, CALLED, {"role": "tool", "tool_call_id": "call_1", "content": "in transit"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, body = post_json(server, payload)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_data(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] <= 8
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
