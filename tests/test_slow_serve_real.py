"""`toolroute serve` on the real default base (SmolLM2-135M, a real router GGUF) over loopback.

The server tests run the tiny random router; this runs the same transport, checks and service on
the real model: the official client's round trip, and the issue-11 crafted requests answered with
a 4xx while the server stays healthy.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import runtime_support

from toolroute.runtime.router import Router

pytestmark = pytest.mark.slow
JSON_POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _raw(address: tuple[str, int], payload: bytes, timeout_s: float = 15.0) -> bytes:
    with socket.create_connection(address, timeout=timeout_s) as sock:
        sock.sendall(payload)
        received = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received:
                break
        return received


def test_serving_the_real_base(tmp_path_factory):
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    from toolroute.runtime.server import ServerSettings, make_server, serve_in_thread

    path = runtime_support.real_router_file(tmp_path_factory)
    with Router.load(path, n_threads=1) as router:
        settings = ServerSettings(read_timeout_s=2.0, keep_alive_timeout_s=2.0)
        server = make_server(router, "127.0.0.1", 0, settings=settings, quiet=True)
        serve_in_thread(server)
        try:
            host, port = server.server_address[:2]
            client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0)
            completion = client.chat.completions.create(
                model="router", messages=[{"role": "user", "content": "where is my order ORD-1234?"}]
            )
            choice = completion.choices[0]
            assert choice.finish_reason in ("tool_calls", "stop")
            if choice.finish_reason == "tool_calls":
                call = choice.message.tool_calls[0].function
                assert call.name in router.catalogue and isinstance(json.loads(call.arguments), dict)

            body = b'{"messages":[{"role":"user","content":"refund ORD-1"}]}'
            browser = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example:8080\r\n"
                b"Origin: http://evil.example\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            assert _raw((host, port), browser).startswith(b"HTTP/1.1 400")
            short = JSON_POST + b'Content-Length: 100\r\n\r\n{"me'
            started = time.monotonic()
            assert _raw((host, port), short).startswith(b"HTTP/1.1 408")
            assert time.monotonic() - started < 10
            deep = b"[" * 50_000
            nested = JSON_POST + b"Content-Length: %d\r\n\r\n" % len(deep) + deep
            assert _raw((host, port), nested).startswith(b"HTTP/1.1 400")
            healthy = _raw(
                (host, port), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            assert healthy.startswith(b"HTTP/1.1 200")
        finally:
            server.shutdown(timeout_s=10)
            server.server_close()
