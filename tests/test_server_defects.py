"""Issue #11 over real loopback sockets: stalls, held connections, browser reachability, desync, crashes.

Each test talks to a `toolroute serve` server on 127.0.0.1 (the tiny random router: routing takes
milliseconds) with short limits (1 s read and keep-alive timeouts), mostly through raw sockets so
that the bytes on the wire are exactly the crafted ones. Every socket read has a deadline, so a
server that holds a connection fails the test instead of hanging it.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import runtime_support
from runtime_support import CUSTOMER_SUPPORT_TOOLS

from toolroute.grammars import load_catalogue
from toolroute.runtime.router import Router

pytest.importorskip("uvicorn")
from toolroute.runtime.server import RouterServer, ServerSettings, make_server, serve_in_thread

CATALOGUE = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
FAST = {"read_timeout_s": 1.0, "keep_alive_timeout_s": 1.0}
ROUTE_BODY = json.dumps({"messages": [{"role": "user", "content": "where is ORD-1?"}]}).encode()


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[Router]:
    with Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as loaded:
        yield loaded


@contextmanager
def serving(router: Router, **settings: Any) -> Iterator[RouterServer]:
    server = make_server(router, "127.0.0.1", 0, settings=ServerSettings(**{**FAST, **settings}), quiet=True)
    serve_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown(timeout_s=10)
        server.server_close()


@pytest.fixture(scope="module")
def server(router) -> Iterator[RouterServer]:
    with serving(router) as running:
        yield running


@pytest.fixture
def model_runs(router, monkeypatch) -> list[int]:
    """One entry per request that reached the model (a context was taken and decoding ran)."""
    runs: list[int] = []
    generate = router._generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(router, "_generate", counted)
    return runs


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Exchange:
    received: bytes
    closed: bool  # the server closed the connection (EOF or reset) before the deadline
    elapsed_s: float  # until closed (or the deadline)
    answered_s: float | None  # until the first byte of an answer

    @property
    def statuses(self) -> list[int]:
        # Not anchored to a line start: a response follows the previous body without a newline.
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.received)]

    @property
    def error(self) -> dict[str, Any]:
        """The first response's OpenAI-shaped error object."""
        head, _, rest = self.received.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        body = json.loads(rest[:length])
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        return body["error"]

    def header(self, name: str) -> str | None:
        head = self.received.partition(b"\r\n\r\n")[0].decode("latin-1")
        match = re.search(rf"(?im)^{re.escape(name)}: *(.*?)\r?$", head)
        return match.group(1) if match else None


def exchange(
    server: RouterServer, *pieces: bytes, gap_s: float = 0.0, read_s: float = 4.0, until_closed: bool = False
) -> Exchange:
    """Send the pieces on a fresh connection, then read until the server closes it, `read_s` passes
    or (unless `until_closed`) one whole response has arrived.

    Sending stops early once the server has answered or closed (writing on would reset the
    connection and could discard the answer before it is read).
    """
    start = time.monotonic()
    deadline = start + read_s
    received = b""
    closed = False
    answered = None
    with socket.create_connection(server.server_address, timeout=read_s) as sock:
        try:
            for index, piece in enumerate(pieces):
                if index and gap_s:
                    time.sleep(gap_s)
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        while not closed and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if chunk and answered is None:
                answered = time.monotonic() - start
            closed = not chunk
            received += chunk
            if not until_closed and _complete(received):
                break
    return Exchange(received, closed, time.monotonic() - start, answered)


def _complete(received: bytes) -> bool:
    head, separator, rest = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator and length and len(rest) >= int(length.group(1)))


def head(server: RouterServer, method: str, path: str, *headers: str, host: str | None = None) -> bytes:
    host = host or f"127.0.0.1:{server.server_address[1]}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_head(server: RouterServer, length: int, *headers: str, **kwargs: Any) -> bytes:
    return head(
        server,
        "POST",
        "/v1/chat/completions",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *headers,
        **kwargs,
    )


def wait_until(condition: Any, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# -- item 2: timeouts, connection cap, bounded queue ----------------------------------------------


def test_a_body_that_stops_short_gets_408_and_the_connection_closes(server):
    # Declares 100 bytes, sends 5: the old server held the socket (and a thread) for good.
    result = exchange(server, post_head(server, 100) + b'{"mes', until_closed=True)
    assert result.statuses == [408] and result.closed, result
    assert result.error["code"] == "request_timeout" and "5 of 100 bytes" in result.error["message"]
    assert 0.9 < result.answered_s < 3.0


def test_a_connection_that_sends_nothing_is_closed(server):
    result = exchange(server, until_closed=True)
    assert result.closed and result.statuses == []
    assert result.elapsed_s < 3.0


def test_a_request_head_trickled_byte_by_byte_is_cut_off(server):
    # One byte every 0.1 s: each byte arrives in time, the head as a whole does not.
    trickle = [bytes([b]) for b in head(server, "GET", "/healthz")]
    result = exchange(server, *trickle, gap_s=0.1, until_closed=True)
    # 408 when the answer is read before the client's next byte; a bare close otherwise.
    assert result.closed and result.statuses in ([408], []), result
    assert result.elapsed_s < 3.0


def test_an_idle_kept_alive_connection_is_closed(server):
    result = exchange(server, head(server, "GET", "/healthz"), until_closed=True)
    assert result.statuses == [200] and result.closed
    assert 0.9 < result.elapsed_s < 3.0  # the 1 s keep-alive timeout, not the read deadline


def test_idle_connections_hold_no_threads(server):
    before = threading.active_count()
    sockets = [socket.create_connection(server.server_address, timeout=5) for _ in range(50)]
    try:
        time.sleep(0.2)
        assert threading.active_count() <= before + 1  # the old server: one thread per socket
        status, _ = get(server, "/healthz")
        assert status == 200
    finally:
        for sock in sockets:
            sock.close()


def get(server: RouterServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*server.server_address, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_connections_beyond_the_cap_get_503(router):
    with serving(router, max_connections=2, read_timeout_s=5.0) as capped:
        held = [socket.create_connection(capped.server_address, timeout=5) for _ in range(2)]
        try:
            assert wait_until(lambda: len(capped._uvicorn.server_state.connections) == 2)
            assert exchange(capped, head(capped, "GET", "/healthz")).statuses == [503]
        finally:
            for sock in held:
                sock.close()
        assert wait_until(lambda: not capped._uvicorn.server_state.connections)
        assert exchange(capped, head(capped, "GET", "/healthz")).statuses == [200]


def test_a_full_queue_gets_503_with_retry_after_at_once(router, model_runs):
    with serving(router, max_queue=0) as strict, router.contexts.acquire():
        result = exchange(strict, post_head(strict, len(ROUTE_BODY)) + ROUTE_BODY)
    assert result.statuses == [503] and result.header("retry-after") == "1"
    assert result.error["code"] == "overloaded" and result.error["type"] == "server_error"
    assert result.answered_s < 1.0 and model_runs == []


def test_a_wait_for_a_context_is_bounded(router, model_runs):
    with serving(router, max_queue=4, queue_timeout_s=0.3) as bounded, router.contexts.acquire():
        result = exchange(bounded, post_head(bounded, len(ROUTE_BODY)) + ROUTE_BODY)
    assert result.statuses == [503] and result.header("retry-after") == "1"
    assert "within 0.3 s" in result.error["message"]
    assert 0.25 < result.answered_s < 2.0 and model_runs == []


def test_a_client_that_leaves_while_queued_costs_no_model_time(router, server, model_runs):
    with router.contexts.acquire():
        sock = socket.create_connection(server.server_address, timeout=5)
        sock.sendall(post_head(server, len(ROUTE_BODY)) + ROUTE_BODY)
        assert wait_until(lambda: router.contexts.waiting == 1)
        sock.close()
        # It leaves the queue while the context is still taken: it never gets one.
        assert wait_until(lambda: router.contexts.waiting == 0)
    time.sleep(0.2)
    assert model_runs == []
    result = exchange(server, post_head(server, len(ROUTE_BODY)) + ROUTE_BODY)
    assert result.statuses == [200] and model_runs == [1]


# -- item 3: Host, Origin, Content-Type, API key --------------------------------------------------


def test_the_issues_browser_post_is_refused(server, model_runs):
    # A page's "simple" request (no preflight) after DNS rebinding: text/plain, a foreign Host, an Origin.
    body = ROUTE_BODY
    crafted = head(
        server,
        "POST",
        "/v1/chat/completions",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
        "Origin: http://evil.example:8080",
        host="evil.example:8080",
    )
    result = exchange(server, crafted + body)
    assert result.statuses == [400] and result.error["param"] == "Host"
    assert model_runs == []


@pytest.mark.parametrize(
    ("extra", "host", "status", "param"),
    [
        ((), "evil.example:{port}", 400, "Host"),
        ((), "localhost:1", 400, "Host"),  # another port is another origin
        (("Origin: http://evil.example",), None, 403, "Origin"),
        (("Origin: null",), None, 403, "Origin"),
    ],
)
def test_foreign_hosts_and_origins_are_refused(server, model_runs, extra, host, status, param):
    port = server.server_address[1]
    crafted = post_head(server, len(ROUTE_BODY), *extra, host=host and host.format(port=port))
    result = exchange(server, crafted + ROUTE_BODY)
    assert result.statuses == [status] and result.error["param"] == param
    assert model_runs == []


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "LOCALHOST:{port}"])
def test_loopback_hosts_are_accepted(server, host):
    result = exchange(
        server, head(server, "GET", "/healthz", host=host.format(port=server.server_address[1]))
    )
    assert result.statuses == [200]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_post_needs_a_json_content_type(server, model_runs, content_type):
    headers = [f"Content-Length: {len(ROUTE_BODY)}"] + (
        [f"Content-Type: {content_type}"] if content_type else []
    )
    result = exchange(server, head(server, "POST", "/v1/chat/completions", *headers) + ROUTE_BODY)
    assert result.statuses == [415] and result.error["param"] == "Content-Type"
    assert model_runs == []


def test_allowed_host_and_origin(router):
    with serving(
        router, allowed_hosts=("router.internal",), allowed_origins=("http://app.example",)
    ) as open_:
        port = open_.server_address[1]
        origin = "Origin: http://app.example"
        ok = exchange(
            open_, post_head(open_, len(ROUTE_BODY), origin, host=f"router.internal:{port}") + ROUTE_BODY
        )
        assert ok.statuses == [200] and ok.header("access-control-allow-origin") == "http://app.example"
        preflight = head(
            open_,
            "OPTIONS",
            "/v1/chat/completions",
            origin,
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type",
        )
        result = exchange(open_, preflight)
        assert result.statuses == [200] and "POST" in (result.header("access-control-allow-methods") or "")
        other = exchange(open_, post_head(open_, len(ROUTE_BODY), "Origin: http://evil.example") + ROUTE_BODY)
        assert other.statuses == [403]


def test_api_key(router):
    openai = pytest.importorskip("openai")
    with serving(router, api_key="sekret") as keyed:
        missing = exchange(keyed, post_head(keyed, len(ROUTE_BODY)) + ROUTE_BODY)
        assert missing.statuses == [401] and missing.error["param"] == "Authorization"
        assert missing.header("www-authenticate") == "Bearer"
        wrong = exchange(keyed, post_head(keyed, len(ROUTE_BODY), "Authorization: Bearer nope") + ROUTE_BODY)
        assert wrong.statuses == [401] and wrong.error["code"] == "invalid_api_key"
        assert exchange(keyed, head(keyed, "GET", "/v1/models")).statuses == [401]
        assert exchange(keyed, head(keyed, "GET", "/healthz")).statuses == [200]
        host, port = keyed.server_address
        client = openai.OpenAI(
            base_url=f"http://{host}:{port}/v1", api_key="sekret", max_retries=0, timeout=10
        )
        completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert completion.object == "chat.completion"


# -- item 4: framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("PUT", "/healthz"),
        ("DELETE", "/v1/chat/completions"),
        ("PATCH", "/v1/models"),
        ("POST", "/no/such/endpoint"),
        ("POST", "/healthz"),
    ],
)
def test_a_body_is_never_parsed_as_a_second_request(server, method, path):
    """Whatever the method and path (one that takes no body, an unknown one, a method the path
    does not allow), a body is read or refused and the connection closed: never a second request."""
    second = head(server, "GET", "/healthz")
    first = head(server, method, path, "Content-Type: application/json", f"Content-Length: {len(second)}")
    result = exchange(server, first + second, until_closed=True)
    assert len(result.statuses) == 1 and result.closed, result.statuses  # the old server: [200, 200]
    assert result.statuses[0] in (400, 404, 405), result.statuses
    if method == "GET":
        assert result.error["param"] == "Content-Length"  # a GET takes no body


N = len(ROUTE_BODY)
CHUNKED = f"{N:x}\r\n".encode() + ROUTE_BODY + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        (("Transfer-Encoding: chunked",), CHUNKED, 411),
        (("Transfer-Encoding: chunked", f"Content-Length: {N}"), ROUTE_BODY, 400),
        (("Transfer-Encoding: gzip, chunked", f"Content-Length: {N}"), ROUTE_BODY, 400),
        ((f"Content-Length: {str(N)[0]}_{str(N)[1:]}",), ROUTE_BODY, 400),
        ((f"Content-Length: +{N}",), ROUTE_BODY, 400),
        ((f"Content-Length: {N}", f"Content-Length: {N + 5}"), ROUTE_BODY + b"12345", 400),
        ((f"Content-Length: {N}, {N + 5}",), ROUTE_BODY + b"12345", 400),
    ],
    ids=["chunked", "chunked+length", "gzip,chunked+length", "4_5", "+5", "two-lengths", "length-list"],
)
def test_ambiguous_framing_is_refused_and_closes(server, model_runs, headers, body, status):
    # A valid route request under every reading of its length (the old server routed these with
    # int(Content-Length) or the first of two); the bytes after it would be a second request.
    smuggled = head(server, "GET", "/healthz")
    crafted = head(server, "POST", "/v1/chat/completions", "Content-Type: application/json", *headers)
    result = exchange(server, crafted + body + smuggled, until_closed=True)
    assert result.statuses == [status] and result.closed, result
    assert result.error["code"]
    assert model_runs == []


def test_a_body_over_the_limit_is_refused_before_it_is_read(router):
    with serving(router, max_body_bytes=1000) as small:
        result = exchange(small, post_head(small, 5_000_000) + b"{", until_closed=True)
        assert result.statuses == [413] and result.closed and result.error["code"] == "body_too_large"
        assert result.answered_s < 1.0


# -- item 5: inputs that crashed -------------------------------------------------------------------


def deep_items_tool(depth: int) -> str:
    inner = '{"type":"array","items":' * depth + '{"type":"string"}' + "}" * depth
    return (
        '[{"type":"function","function":{"name":"track_order","parameters":'
        '{"type":"object","properties":{"order_id":' + inner + "}}}}]"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 50_000, "invalid_json"),
        (b'{"messages":' + b"[" * 900 + b"]" * 900 + b"}", "invalid_json"),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "assistant",
                            "tool_calls": [{"function": {"name": "track_order", "arguments": "[" * 5000}}],
                        },
                        {"role": "user", "content": "and now?"},
                    ]
                }
            ).encode(),
            "invalid_arguments",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {"function": {"name": "track_order", "arguments": "[" * 900 + "]" * 900}}
                            ],
                        },
                        {"role": "user", "content": "and now?"},
                    ]
                }
            ).encode(),
            "invalid_arguments",
        ),
        (
            b'{"messages":[{"role":"user","content":"x"}],"tools":' + deep_items_tool(900).encode() + b"}",
            "invalid_json",
        ),
    ],
    ids=["50k-brackets", "900-deep-messages", "5000-deep-arguments", "900-deep-arguments", "900-deep-items"],
)
def test_deep_json_is_a_400_not_a_500(server, model_runs, body, code):
    result = exchange(server, post_head(server, len(body)) + body)
    assert result.statuses == [400], result.received[:300]
    assert result.error["code"] == code and "deeper than 64 levels" in result.error["message"]
    assert result.answered_s < 2.0 and model_runs == []


def test_tools_with_refs_are_refused_without_normalising(server, model_runs):
    # Each level refers to the next twice: normalising 28 levels took hours; a name check and
    # a $ref check cost microseconds.
    levels = 28
    defs: dict[str, Any] = {f"L{levels}": {"type": "string"}}
    for level in range(levels):
        ref = {"$ref": f"#/$defs/L{level + 1}"}
        defs[f"L{level}"] = {"type": "object", "properties": {"a": ref, "b": ref}, "required": ["a", "b"]}
    parameters = {"type": "object", "properties": {"order_id": {"$ref": "#/$defs/L0"}}, "$defs": defs}
    for name, code in [("track_order", "invalid_tools"), ("cancel_order", "tools_mismatch")]:
        tools = [{"type": "function", "function": {"name": name, "parameters": parameters}}]
        body = json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": tools}).encode()
        assert len(body) < 4096
        result = exchange(server, post_head(server, len(body)) + body)
        assert result.statuses == [400] and result.error["code"] == code, result.received[:300]
        assert result.answered_s < 1.0
    assert model_runs == []


def test_catalogue_tools_sent_back_verbatim_are_accepted(server):
    tools = [t for t in CATALOGUE.to_openai() if t["function"]["name"] != "escalate"]
    body = json.dumps({"messages": [{"role": "user", "content": "where is ORD-1"}], "tools": tools}).encode()
    result = exchange(server, post_head(server, len(body)) + body)
    assert result.statuses == [200]


# -- the serve extra is optional -------------------------------------------------------------------


def test_the_runtime_runs_without_the_serve_extra(tmp_path_factory):
    import subprocess
    import sys

    tiny = runtime_support.tiny_router_file(tmp_path_factory)
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'h11', 'anyio'): sys.modules[name] = None\n"
        "from toolroute.cli import main\n"
        f"assert main(['route', {str(tiny)!r}, 'where is ORD-1', '--threads', '1']) == 0\n"
        f"sys.exit(main(['serve', {str(tiny)!r}, '--threads', '1']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["kind"] in ("call", "no_tool")
    assert "Traceback" not in result.stderr
    assert "toolroute serve: error:" in result.stderr and "pip install 'toolroute[serve]'" in result.stderr
