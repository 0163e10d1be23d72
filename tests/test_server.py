"""`toolroute serve`: the official OpenAI client over real HTTP on 127.0.0.1, and raw-HTTP errors."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import runtime_support
from runtime_support import CUSTOMER_SUPPORT_TOOLS, INJECTIONS

from toolroute.grammars import ToolCall, load_catalogue
from toolroute.runtime.router import Router
from toolroute.runtime.server import ServerSettings, make_server, serve_in_thread

openai = pytest.importorskip("openai")

CATALOGUE = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = runtime_support.real_router_file(tmp_path_factory)
    with Router.load(path, n_threads=1) as router:
        settings = ServerSettings(max_body_bytes=MAX_BODY)
        httpd = make_server(router, "127.0.0.1", 0, settings=settings, quiet=True)
        serve_in_thread(httpd)
        yield httpd
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def client(server):
    host, port = server.server_address[:2]
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0, timeout=60)


def check_completion(completion, allowed=None) -> None:
    """One tool call with canonical, schema-valid arguments, or a plain-content answer."""
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.usage.total_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    extra = completion.model_extra["toolroute"]
    if choice.finish_reason == "tool_calls":
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        text = f'{{"tool":"{call.function.name}","arguments":{call.function.arguments}}}'
        parsed = CATALOGUE.parse(text)
        assert isinstance(parsed, ToolCall) and parsed.canonical == text == extra["raw"]
        assert allowed is None or call.function.name in allowed
        assert extra["kind"] == "call"
    else:
        assert choice.finish_reason == "stop" and not choice.message.tool_calls
        assert isinstance(choice.message.content, str)
        assert extra["kind"] in ("no_tool", "low_confidence")
    assert 0.0 <= extra["confidence"] <= 1.0 and extra["runner_up"] is not None


def test_openai_client_routes(client):
    for text in ["where is my order ORD-1234?", INJECTIONS[0]]:
        completion = client.chat.completions.create(
            model="customer-support", messages=[{"role": "user", "content": text}]
        )
        check_completion(completion)


def test_openai_client_with_history_and_tools_subset(client):
    tools = [t for t in CATALOGUE.to_openai() if t["function"]["name"] == "escalate"]
    completion = client.chat.completions.create(
        model="customer-support",
        messages=[
            {"role": "system", "content": "you are helpful"},
            {"role": "user", "content": "my order ORD-5 never came"},
            {"role": "assistant", "content": "Sorry to hear that."},
            {"role": "user", "content": "I want to talk to a person now"},
        ],
        tools=tools,
    )
    check_completion(completion, allowed={"escalate"})


def test_openai_client_tools_not_in_catalogue(client):
    foreign = {"type": "function", "function": {"name": "cancel_order", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "cancel ORD-1"}], tools=[foreign]
        )
    error = excinfo.value.body
    assert (
        excinfo.value.status_code == 400
        and error["code"] == "tools_mismatch"
        and "cancel_order" in error["message"]
    )
    assert set(error) >= {"message", "type", "param", "code"} and error["param"] == "tools"


def test_openai_client_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["customer-support"]


def test_concurrent_http_requests(server, client):
    texts = ["refund ORD-7", "hello", "where is ORD-8"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        completions = list(
            pool.map(
                lambda t: client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": t}]
                ),
                texts,
            )
        )
    direct = [server.service.router.route(t).raw for t in texts]
    assert [c.model_extra["toolroute"]["raw"] for c in completions] == direct


# -- raw HTTP --------------------------------------------------------------------------------------


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read() or b"null")
    finally:
        connection.close()


def post(server, payload) -> tuple[int, dict, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})


def assert_error(status: int, body: dict, expected: int, code: str | None = None) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


def test_healthz_and_models(server):
    status, _, body = request(server, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, _, body = request(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and body["data"][0]["id"] == "customer-support"


def test_not_found_and_method_not_allowed(server):
    status, _, body = request(server, "GET", "/v1/embeddings")
    assert_error(status, body, 404, "not_found")
    status, headers, body = request(server, "GET", "/v1/chat/completions")
    assert_error(status, body, 405, "method_not_allowed")
    assert headers["Allow"] == "POST"
    status, _, body = request(server, "DELETE", "/healthz")
    assert_error(status, body, 405)


def test_body_too_large(server):
    status, _, body = post(server, {"messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]})
    assert_error(status, body, 413, "body_too_large")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        ({"model": "m"}, "invalid_request"),
        ({"messages": []}, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_request"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "no_user_message"),
        ({"messages": [{"role": "user", "content": "   "}]}, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "stream_options": {}}, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "always"}, "invalid_tool_choice"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "unsupported"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": []}, "invalid_tools"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "nope"}]}, "invalid_tools"),
        ({"messages": [{"role": "user", "content": "order " * 5000}]}, "context_length_exceeded"),
    ],
)
def test_bad_requests(server, payload, code):
    status, _, body = post(server, payload)
    assert_error(status, body, 400, code)


def test_tool_declared_differently_is_refused(server):
    tools = CATALOGUE.to_openai()
    tools[0]["function"]["parameters"] = {"type": "object", "properties": {"order_id": {"type": "integer"}}}
    status, _, body = post(server, {"messages": [{"role": "user", "content": "x"}], "tools": tools})
    assert_error(status, body, 400, "tools_mismatch")
    assert "declared differently" in body["error"]["message"]


def test_internal_error_is_structured(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.service.router, "route", broken)
    status, _, body = post(server, {"messages": [{"role": "user", "content": "x"}]})
    assert_error(status, body, 500, "internal_error")
    assert body["error"]["type"] == "server_error"
    monkeypatch.undo()
    status, _, _ = request(server, "GET", "/healthz")  # still serving
    assert status == 200
