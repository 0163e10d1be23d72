"""Stopping `toolroute serve`: SIGTERM stops accepting, finishes in-flight requests, exits 0;
requests still queued when the drain timeout ends are withdrawn at once, costing no model time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import runtime_support
from serve_support import post_json, serving, wait_until

from toolroute.grammars import ToolCall, load_catalogue
from toolroute.runtime.router import Router

pytest.importorskip("uvicorn")

CATALOGUE = load_catalogue(runtime_support.CUSTOMER_SUPPORT_TOOLS)
BODY = {"messages": [{"role": "user", "content": "where is my order ORD-1234?"}], "tool_choice": "required"}


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[Router]:
    with Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as loaded:
        yield loaded


@pytest.fixture
def model_runs(router, monkeypatch) -> list[int]:
    runs: list[int] = []
    generate = router._generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(router, "_generate", counted)
    return runs


def check_call(body: bytes) -> None:
    (call,) = json.loads(body)["choices"][0]["message"]["tool_calls"]
    text = f'{{"tool":"{call["function"]["name"]}","arguments":{call["function"]["arguments"]}}}'
    assert isinstance(CATALOGUE.parse(text), ToolCall)


def test_shutdown_finishes_a_request_in_flight(router, model_runs):
    with serving(router, shutdown_timeout_s=10) as server, ThreadPoolExecutor(2) as pool:
        with router.contexts.acquire():
            answer = pool.submit(post_json, server, BODY)
            assert wait_until(lambda: router.contexts.waiting == 1)
            stopping = pool.submit(server.shutdown, 10)
            time.sleep(0.3)  # the shutdown has begun: the listener is closed, the request waits on
            with pytest.raises(OSError):
                socket.create_connection(server.server_address, timeout=2).close()
            assert not stopping.done()
        status, _, body = answer.result(timeout=10)
        stopping.result(timeout=10)
    assert status == 200 and model_runs == [1]
    check_call(body)


def test_requests_queued_past_the_drain_timeout_are_withdrawn_at_once(router, model_runs):
    with serving(router, shutdown_timeout_s=0.5, queue_timeout_s=60) as server, ThreadPoolExecutor(1) as pool:
        with router.contexts.acquire():
            answer = pool.submit(post_json, server, BODY, timeout_s=20)
            assert wait_until(lambda: router.contexts.waiting == 1)
            start = time.monotonic()
            server.shutdown(timeout_s=20)
            elapsed = time.monotonic() - start
            assert server._stopped.is_set() and elapsed < 3.0
            # The withdrawn wait ends in its worker thread, which may run just after uvicorn
            # returns; without withdrawal it would stay queued for its 60 s limit.
            assert wait_until(lambda: router.contexts.waiting == 0, timeout_s=2.0)
        status, headers, body = answer.result(timeout=10)
    # Cut, and told so: a 503 naming the shutdown, never a 500 or a silent close.
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "shutting_down"
    assert model_runs == []


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path_factory):
    """A real `toolroute serve` process, the real customer-support router (untuned: a route
    takes a noticeable time, so requests are still in flight when SIGTERM arrives)."""
    path = runtime_support.real_router_file(tmp_path_factory)
    command = [sys.executable, "-m", "toolroute", "serve", str(path), "--port", "0", "--threads", "1"]
    process = subprocess.Popen(
        [*command, "--quiet", "--shutdown-timeout", "20"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "toolroute serve exited before serving"
            url = re.search(r"on http://127\.0\.0\.1:(\d+)/v1", line)
        port = int(url.group(1))
        bodies = [{**BODY, "messages": [{"role": "user", "content": f"where is ORD-{n}?"}]} for n in range(3)]
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(_post, port, body) for body in bodies]
            time.sleep(0.5)  # accepted and routing (one) or queued (two)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = _refused(port)
            results = [answer.result(timeout=60) for answer in answers]
        code = process.wait(timeout=30)
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, stderr
    assert refused, "a new connection was accepted after SIGTERM"
    assert [status for status, _ in results] == [200, 200, 200], results
    for _, body in results:
        check_call(body)
    assert "toolroute serve: stopped" in stderr and "Traceback" not in stderr


def _post(port: int, body: dict[str, Any]) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False
