"""Helpers for tests that run `toolroute serve` on 127.0.0.1: a server per block, raw HTTP, SSE parsing."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from toolroute.runtime.router import Router
from toolroute.runtime.server import RouterServer, ServerSettings, make_server, serve_in_thread

FAST = {"read_timeout_s": 2.0, "keep_alive_timeout_s": 2.0}


@contextmanager
def serving(router: Router, **settings: Any) -> Iterator[RouterServer]:
    server = make_server(router, "127.0.0.1", 0, settings=ServerSettings(**{**FAST, **settings}), quiet=True)
    serve_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown(timeout_s=10)
        server.server_close()


def base_url(server: RouterServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"


def post_raw(
    server: RouterServer, body: bytes, headers: dict[str, str] | None = None, timeout_s: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """POST /v1/chat/completions; (status, lower-cased headers, raw body)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(server: RouterServer, payload: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return post_raw(server, json.dumps(payload).encode(), **kwargs)


def get_status(server: RouterServer, path: str = "/healthz", timeout_s: float = 10.0) -> int:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def sse_data(body: bytes) -> list[str]:
    """The `data:` payloads of an event stream, strictly framed: `data: ...` lines, each event
    ended by a blank line, nothing else."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    payloads = []
    for event in text[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, event
        payloads.append(event[len("data: ") :])
    return payloads


def wait_until(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
